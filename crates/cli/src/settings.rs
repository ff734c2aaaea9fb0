//! The configuration a user writes: one TOML file whose keys are the
//! engine's settings ([`runner_host::Config`]) and the server's
//! ([`runner_api::ServerConfig`]), side by side, as they always were. Each
//! setting comes from the built-in defaults, then the file (`--config`,
//! `RUNNER_CONFIG` or `/etc/runner/config.toml`), then `RUNNER_*`
//! environment variables, then flags; the later wins.
//!
//! A setting's key is its path in the file (`queue_size`,
//! `limits.run.wall_time_ms`); its environment variable is the key in
//! capitals with `_` for `.`, after `RUNNER_` (`RUNNER_QUEUE_SIZE`,
//! `RUNNER_LIMITS_RUN_WALL_TIME_MS`), and `--set KEY=VALUE` sets it from
//! the command line.

use std::path::{Path, PathBuf};

use runner_api::{ServerConfig, ServerConfigError};
use runner_host::config::DEFAULT_CONFIG_FILE;
use runner_host::{Config, ConfigError};
use toml::{Table, Value};

/// Everything the configuration says.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub engine: Config,
    pub server: ServerConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: {message}")]
    Value { origin: String, message: String },
    #[error("--set {0:?}: expected KEY=VALUE")]
    Set(String),
    #[error(transparent)]
    Engine(#[from] ConfigError),
    #[error(transparent)]
    Server(#[from] ServerConfigError),
}

/// Where settings come from, besides the defaults.
pub struct Sources<'a> {
    /// A file given explicitly, which must exist; else `RUNNER_CONFIG`, else
    /// [`DEFAULT_CONFIG_FILE`] if it exists.
    pub file: Option<PathBuf>,
    /// Looks up an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `(key, value)` from flags, in order.
    pub flags: Vec<(String, String)>,
}

/// Set in the file only, so that keys stay out of process listings and
/// environments.
const FILE_ONLY: &str = "api_keys";

impl Settings {
    pub fn load(sources: Sources<'_>) -> Result<Settings, SettingsError> {
        let defaults = Settings {
            engine: Config::defaults(sources.env),
            server: ServerConfig::default(),
        };
        let mut table = defaults.table();
        let leaves = leaves(&table);

        let explicit = sources
            .file
            .or_else(|| (sources.env)("RUNNER_CONFIG").map(PathBuf::from));
        let file = match explicit {
            Some(path) => Some(path),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            merge(&mut table, read_file(&path)?);
        }

        // RUNNER_HOME is the state directory's older name.
        if let Some(home) = (sources.env)("RUNNER_HOME").filter(|v| !v.is_empty()) {
            table.insert("state_dir".into(), Value::String(home));
        }
        for (key, default) in &leaves {
            let name = format!("RUNNER_{}", key.replace('.', "_").to_uppercase());
            if key == FILE_ONLY {
                if (sources.env)(&name).is_some() {
                    return Err(SettingsError::Value {
                        origin: format!("environment variable {name}"),
                        message: "API keys are set in the configuration file only ([[api_keys]], see `runner key new`)".into(),
                    });
                }
                continue;
            }
            if let Some(raw) = (sources.env)(&name) {
                let value = parse_value(default, &raw).map_err(|message| SettingsError::Value {
                    origin: format!("environment variable {name}"),
                    message,
                })?;
                set(&mut table, key, value);
            }
        }
        for (key, raw) in sources.flags {
            let value = flag_value(&leaves, &key, &raw)?;
            set(&mut table, &key, value);
        }
        Settings::from_table(table)
    }

    /// The configuration as TOML, as `--print-config` shows it; it loads
    /// back as the same configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.table()).expect("the configuration serializes")
    }

    /// The engine's keys, then the server's, in one table.
    fn table(&self) -> Table {
        let mut table = to_table(&self.engine);
        table.extend(to_table(&self.server));
        table
    }

    /// Each key to its owner: the server's to the server, the engine's to
    /// the engine; a key of neither is refused with the keys there are.
    fn from_table(table: Table) -> Result<Settings, SettingsError> {
        let server_keys = to_table(&ServerConfig::default());
        let engine_keys = to_table(&Config::with_state_dir(""));
        let (mut engine, mut server) = (Table::new(), Table::new());
        for (key, value) in table {
            if server_keys.contains_key(&key) {
                server.insert(key, value);
            } else if engine_keys.contains_key(&key) {
                engine.insert(key, value);
            } else {
                let mut known: Vec<&String> =
                    engine_keys.keys().chain(server_keys.keys()).collect();
                known.sort();
                let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
                return Err(SettingsError::Value {
                    origin: "configuration".into(),
                    message: format!("unknown setting `{key}`; settings are {}", known.join(", ")),
                });
            }
        }
        let settings = Settings {
            engine: typed(engine)?,
            server: typed(server)?,
        };
        settings.engine.check()?;
        settings.server.check()?;
        Ok(settings)
    }
}

/// Prints the configuration as TOML that loads back as itself, after
/// comments on what some of its values come to on this machine.
pub fn print(settings: &Settings) -> anyhow::Result<()> {
    let config = &settings.engine;
    let capacity = runner_api::Capacity::of_host(config.reserved_memory_mib, config.machine_vms())
        .map_err(anyhow::Error::msg)?;
    let python = runner_host::lang::Languages::builtin()?
        .get("python")?
        .memory_mib;
    let vm = u64::from(runner_host::vmm::vm_memory_mib(python.into()));
    outln!(
        "# capacity: {} VMs at once ({} CPUs, max_vms {}; {} MiB of memory for VMs = {} VMs of {vm} MiB)",
        capacity.vms_of(vm),
        capacity.cpus,
        capacity.max_vms,
        capacity.vm_memory_budget_mib,
        capacity.vm_memory_budget_mib / vm,
    );
    if config.debian_mirror.is_empty() {
        let source = runner_host::image::DebianSource::new("");
        match source.mirror() {
            Ok(mirror) => outln!("# debian_mirror: from this machine's apt sources: {mirror}"),
            Err(e) => outln!("# debian_mirror: {e}"),
        }
    }
    crate::write_stdout(format_args!("{}", settings.to_toml()));
    Ok(())
}

/// `engine` with one setting changed as `--set key=raw` changes it: for
/// settings varied side by side (`runner bench --vary`).
pub fn with_setting(engine: &Config, key: &str, raw: &str) -> Result<Config, SettingsError> {
    let mut table = to_table(engine);
    let value = flag_value(&leaves(&table), key, raw)?;
    set(&mut table, key, value);
    let engine: Config = typed(table)?;
    engine.check()?;
    Ok(engine)
}

fn to_table(value: &impl serde::Serialize) -> Table {
    match Value::try_from(value) {
        Ok(Value::Table(table)) => table,
        _ => unreachable!("a configuration serializes to a table"),
    }
}

/// `table` as a `T`, or what is wrong named by its key: "pool.warm_up:
/// invalid type ...".
fn typed<T: serde::de::DeserializeOwned>(table: Table) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| SettingsError::Value {
            origin: "configuration".into(),
            message: format!("{}: {}", e.path(), e.inner().message()),
        },
    )
}

fn read_file(path: &Path) -> Result<Table, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<Table>()
        .map_err(|source| SettingsError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
}

/// Every setting's key with its default value.
fn leaves(table: &Table) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            Value::Table(inner) => {
                for (sub, leaf) in leaves(inner) {
                    out.push((format!("{key}.{sub}"), leaf));
                }
            }
            leaf => out.push((key.clone(), leaf.clone())),
        }
    }
    out
}

/// Lays `over` onto `base`, table by table.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base)), Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let inner = table
                .entry(head)
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(inner) = inner {
                set(inner, rest, value);
            }
        }
        None => {
            table.insert(key.into(), value);
        }
    }
}

/// The value `--set key=raw` gives, in the type of `key` among `leaves`.
fn flag_value(leaves: &[(String, Value)], key: &str, raw: &str) -> Result<Value, SettingsError> {
    let origin = format!("setting {key}");
    if key == FILE_ONLY {
        return Err(SettingsError::Value {
            origin,
            message: "API keys are set in the configuration file only ([[api_keys]]), so that they stay out of process listings".into(),
        });
    }
    let Some((_, default)) = leaves.iter().find(|(k, _)| k == key) else {
        let known: Vec<&str> = leaves.iter().map(|(k, _)| k.as_str()).collect();
        return Err(SettingsError::Value {
            origin,
            message: format!("no such setting; settings are {}", known.join(", ")),
        });
    };
    parse_value(default, raw).map_err(|message| SettingsError::Value { origin, message })
}

/// Reads a value from an environment variable or flag, in the type of the
/// setting's default.
fn parse_value(default: &Value, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    Ok(match default {
        Value::String(_) => Value::String(raw.into()),
        Value::Integer(_) => Value::Integer(
            raw.replace('_', "")
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        Value::Float(_) => Value::Float(
            raw.parse()
                .map_err(|_| format!("{raw:?} is not a number"))?,
        ),
        Value::Boolean(_) => Value::Boolean(match raw {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("{raw:?} is not true or false (or on, off)")),
        }),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        other => return Err(format!("cannot be set from text (a {})", other.type_str())),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use runner_host::vmm::placement::HugePages;
    use runner_host::vmm::{AccelMode, Machine};

    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = file.map(|text| {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.get(name).cloned();
        Settings::load(Sources {
            // An explicit empty file keeps /etc/runner/config.toml out of tests.
            file: Some(path.unwrap_or_else(|| {
                let empty = dir.path().join("empty.toml");
                std::fs::write(&empty, "").unwrap();
                empty
            })),
            env: &lookup,
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn api_keys_come_from_the_file_only_and_are_checked() {
        let hash = "ab".repeat(32);
        let file =
            format!("[[api_keys]]\nname = \"alice\"\nsha256 = \"{hash}\"\nmax_sessions = 2\n");
        let settings = load(Some(&file), &[], &[]).unwrap();
        assert_eq!(settings.server.api_keys.len(), 1);
        assert_eq!(settings.server.api_keys[0].max_sessions, Some(2));
        let again = load(Some(&settings.to_toml()), &[], &[]).unwrap();
        assert_eq!(again, settings, "--print-config loads back with its keys");

        let e = load(None, &[("RUNNER_API_KEYS", "secret")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("RUNNER_API_KEYS") && e.contains("file only"),
            "{e}"
        );
        let e = load(None, &[], &[("api_keys", "secret")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("file only"), "{e}");
        let e = load(Some(&format!("{file}{file}")), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn file_then_environment_then_flags() {
        let file = "listen = \"127.0.0.1:1000\"\nqueue_size = 5\nmax_vms = 3\n[limits.run]\nwall_time_ms = 2000\n";
        let settings = load(Some(file), &[], &[]).unwrap();
        assert_eq!(settings.server.listen.port(), 1000);
        assert_eq!(settings.server.queue_size, 5);
        assert_eq!(settings.engine.limits.run.wall_time_ms, 2000);
        // A partial [limits.run] keeps the other defaults.
        assert_eq!(
            settings.engine.limits.run.cpu_time_ms,
            runner_host::LimitPolicy::default().run.cpu_time_ms
        );

        let env = [
            ("RUNNER_LISTEN", "127.0.0.1:2000"),
            ("RUNNER_QUEUE_SIZE", "7"),
            ("RUNNER_LIMITS_RUN_WALL_TIME_MS", "3000"),
        ];
        let settings = load(Some(file), &env, &[]).unwrap();
        assert_eq!(settings.server.listen.port(), 2000);
        assert_eq!(settings.server.queue_size, 7);
        assert_eq!(
            settings.engine.max_vms, 3,
            "the file's value stays where env says nothing"
        );
        assert_eq!(settings.engine.limits.run.wall_time_ms, 3000);

        let settings = load(
            Some(file),
            &env,
            &[
                ("listen", "127.0.0.1:3000"),
                ("limits.run.wall_time_ms", "4000"),
            ],
        )
        .unwrap();
        assert_eq!(settings.server.listen.port(), 3000);
        assert_eq!(settings.server.queue_size, 7);
        assert_eq!(settings.engine.limits.run.wall_time_ms, 4000);
    }

    #[test]
    fn state_dir_from_runner_home_or_its_own_variable() {
        let settings = load(
            Some("state_dir = \"/from/file\""),
            &[("RUNNER_HOME", "/home")],
            &[],
        )
        .unwrap();
        assert_eq!(settings.engine.state_dir, PathBuf::from("/home"));
        let env = [("RUNNER_HOME", "/home"), ("RUNNER_STATE_DIR", "/state")];
        assert_eq!(
            load(None, &env, &[]).unwrap().engine.state_dir,
            PathBuf::from("/state")
        );
    }

    #[test]
    fn lists_from_commas() {
        let settings = load(None, &[("RUNNER_LANGUAGES", "python, go")], &[]).unwrap();
        assert_eq!(settings.engine.languages, ["python", "go"]);
    }

    #[test]
    fn errors_name_their_source() {
        let e = load(None, &[("RUNNER_MAX_VMS", "many")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("RUNNER_MAX_VMS") && e.contains("whole number"),
            "{e}"
        );
        let e = load(Some("queue_sise = 3"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown setting `queue_sise`") && e.contains("queue_size"),
            "{e}"
        );
        let e = load(None, &[], &[("nope", "1")]).unwrap_err().to_string();
        assert!(
            e.contains("setting nope") && e.contains("queue_size"),
            "{e}"
        );
        let e = load(Some("listen = [\"x\""), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = load(None, &[("RUNNER_LISTEN", "localhost")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("socket address"), "{e}");
        let e = load(None, &[], &[("limits.run.wall_time_ms", "999999999")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max.wall_time_ms"), "{e}");
        let e = load(Some("[limits.run]\nwall_tim_ms = 3"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.run") && e.contains("wall_tim_ms"), "{e}");
        let e = load(Some("queue_timeout_ms = 0"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_size = 0"), "{e}");
    }

    #[test]
    fn engine_settings_keep_their_variables() {
        let env = [
            ("RUNNER_SNAPSHOTS", "off"),
            ("RUNNER_PRESTART", "off"),
            ("RUNNER_QEMU", "/opt/qemu/bin/qemu-system-x86_64"),
            ("RUNNER_ACCEL", "tcg"),
            ("RUNNER_KERNEL_ARGS", "loglevel=7  debug"),
            ("RUNNER_DEBIAN_MIRROR", "http://mirror.example/debian"),
        ];
        let config = load(None, &env, &[]).unwrap().engine;
        assert!(!config.snapshots && !config.prestart);
        assert_eq!(config.debian_mirror, "http://mirror.example/debian");
        let vmm = config.vmm();
        assert_eq!(
            vmm.qemu,
            Some(PathBuf::from("/opt/qemu/bin/qemu-system-x86_64"))
        );
        assert_eq!(vmm.accel, AccelMode::Tcg);
        assert_eq!(vmm.kernel_args, ["loglevel=7", "debug"]);
        let defaults = load(None, &[], &[]).unwrap().engine;
        assert!(defaults.snapshots && defaults.prestart);
        assert_eq!(defaults.vmm().qemu, None, "found on PATH");
        assert_eq!(defaults.accel, AccelMode::Auto);
        let e = load(None, &[("RUNNER_ACCEL", "hvf")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hvf") && e.contains("tcg"), "{e}");
    }

    #[test]
    fn debians_kernel_on_microvm_is_refused_at_load() {
        let e = load(None, &[], &[("kernel", "debian"), ("machine", "microvm")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("q35") && e.contains("runner"), "{e}");
        for (kernel, machine) in [("runner", "microvm"), ("debian", "q35")] {
            let settings = load(None, &[], &[("kernel", kernel), ("machine", machine)]).unwrap();
            assert_eq!(settings.engine.machine.to_string(), machine);
        }
        assert_eq!(load(None, &[], &[]).unwrap().engine.machine, Machine::Q35);
    }

    #[test]
    fn cpu_lists_are_read_and_checked() {
        let settings = load(Some("vm_cpus = \"0\"\npool_cpus = \"\""), &[], &[]).unwrap();
        assert_eq!(settings.engine.vmm().vm_cpus.cpus(), [0]);
        let e = load(Some("vm_cpus = \"2-1\""), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CPU list \"2-1\"") && e.contains("backwards"),
            "{e}"
        );
    }

    #[test]
    fn memory_placement_is_set_and_bad_values_name_their_key() {
        let engine = || load(None, &[], &[]).unwrap().engine;
        let defaults = engine().vmm();
        assert_eq!(defaults.huge_pages, HugePages::Transparent);
        assert!(defaults.numa_bind);
        let config = load(Some("huge_pages = \"off\""), &[], &[("numa_bind", "false")])
            .unwrap()
            .engine
            .vmm();
        assert_eq!(config.huge_pages, HugePages::Off);
        assert!(!config.numa_bind);
        let changed = with_setting(&engine(), "huge_pages", "off").unwrap();
        assert_eq!(changed.huge_pages, HugePages::Off);
        let e = with_setting(&engine(), "huge_pages", "sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("huge_pages: unknown variant"), "{e}");
        let e = with_setting(&engine(), "queue_size", "3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such setting"), "{e}");
        for (file, key) in [
            (
                "huge_pages = \"always\"",
                "huge_pages: unknown variant `always`",
            ),
            ("[pool]\nwarm_up = 3", "pool.warm_up: invalid type"),
        ] {
            let e = load(Some(file), &[], &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_languages_are_refused_with_the_known_ones() {
        let e = load(None, &[("RUNNER_LANGUAGES", "python,cobol")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("languages") && e.contains("cobol"), "{e}");
    }

    #[test]
    fn printed_config_loads_back_the_same() {
        let settings = load(Some("queue_size = 9\nmax_vms = 2"), &[], &[]).unwrap();
        let again = load(Some(&settings.to_toml()), &[], &[]).unwrap();
        assert_eq!(settings, again);
    }
}
