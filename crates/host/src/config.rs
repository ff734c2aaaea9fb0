//! The server's configuration: defaults, then a TOML file, then environment
//! variables, then flags; each overrides the one before.
//!
//! Every setting has a key (`listen`, `queue_size`, `limits.run.wall_time_ms`)
//! that is its path in the TOML file. Its environment variable is the key in
//! capitals with `_` for `.`, after `RUNNER_` (`RUNNER_QUEUE_SIZE`,
//! `RUNNER_LIMITS_RUN_WALL_TIME_MS`), and `--set KEY=VALUE` sets it from the
//! command line. The common ones also have their own flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use runner_host::LimitPolicy;
use runner_host::pool::PoolConfig;
use runner_host::state::StateDir;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Read when `--config` and `RUNNER_CONFIG` are not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/runner/config.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port the API listens on.
    pub listen: SocketAddr,
    /// Images and per-execution run directories.
    pub state_dir: PathBuf,
    /// Languages served; empty serves every language.
    pub languages: Vec<String>,
    /// Build missing images at start-up (the server is not ready until then).
    pub prepare_images: bool,
    /// Make missing snapshots at start-up, after the images (executions boot
    /// cold until they exist).
    pub prepare_snapshots: bool,
    /// Host memory kept for everything but VMs.
    pub reserved_memory_mib: u64,
    /// VMs at once; 0 means one per CPU.
    pub max_vms: usize,
    /// Requests that may wait for capacity; more get 429 at once.
    pub queue_size: usize,
    /// How long a request waits for capacity before it gets 429.
    pub queue_timeout_ms: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// After SIGTERM, how long running executions may go on before they are
    /// killed.
    pub shutdown_timeout_ms: u64,
    /// Per-stage defaults and maximums of execution limits.
    pub limits: LimitPolicy,
    /// Warm pools of restored VMs (languages with a snapshot only).
    pub pool: PoolConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: StateDir::from_env().root().to_path_buf(),
            languages: Vec::new(),
            prepare_images: true,
            prepare_snapshots: true,
            reserved_memory_mib: 2048,
            max_vms: 0,
            queue_size: 64,
            queue_timeout_ms: 60_000,
            max_body_bytes: 8 << 20,
            shutdown_timeout_ms: 30_000,
            limits: LimitPolicy::default(),
            pool: PoolConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    #[error("invalid configuration: {0}")]
    Invalid(String),
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

impl Config {
    pub fn load(sources: Sources<'_>) -> Result<Config, ConfigError> {
        let defaults = Value::try_from(Config::default()).expect("the defaults serialize");
        let Value::Table(mut table) = defaults else {
            unreachable!("a struct serializes to a table")
        };
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

        // RUNNER_HOME is the state directory's older name (the CLI's).
        if let Some(home) = (sources.env)("RUNNER_HOME").filter(|v| !v.is_empty()) {
            table.insert("state_dir".into(), Value::String(home));
        }
        for (key, default) in &leaves {
            let name = format!("RUNNER_{}", key.replace('.', "_").to_uppercase());
            if let Some(raw) = (sources.env)(&name) {
                let value = parse_value(default, &raw).map_err(|message| ConfigError::Value {
                    origin: format!("environment variable {name}"),
                    message,
                })?;
                set(&mut table, key, value);
            }
        }
        for (key, raw) in sources.flags {
            let origin = format!("setting {key}");
            let Some((_, default)) = leaves.iter().find(|(k, _)| *k == key) else {
                let known: Vec<&str> = leaves.iter().map(|(k, _)| k.as_str()).collect();
                return Err(ConfigError::Value {
                    origin,
                    message: format!("no such setting; settings are {}", known.join(", ")),
                });
            };
            let value = parse_value(default, &raw)
                .map_err(|message| ConfigError::Value { origin, message })?;
            set(&mut table, &key, value);
        }

        let config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Value {
                origin: "configuration".into(),
                message: e.message().to_string(),
            })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let policy = &self.limits;
        for (name, set) in [("compile", &policy.compile), ("run", &policy.run)] {
            let over = [
                ("wall_time_ms", set.wall_time_ms, policy.max.wall_time_ms),
                ("cpu_time_ms", set.cpu_time_ms, policy.max.cpu_time_ms),
                ("memory_mib", set.memory_mib, policy.max.memory_mib),
                (
                    "processes",
                    set.processes.into(),
                    policy.max.processes.into(),
                ),
                ("output_bytes", set.output_bytes, policy.max.output_bytes),
                (
                    "file_size_bytes",
                    set.file_size_bytes,
                    policy.max.file_size_bytes,
                ),
            ]
            .into_iter()
            .find(|(_, value, max)| value > max);
            if let Some((field, value, max)) = over {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name}.{field} = {value} is above limits.max.{field} = {max}"
                )));
            }
        }
        if self.queue_timeout_ms == 0 && self.queue_size > 0 {
            return Err(ConfigError::Invalid(
                "queue_timeout_ms is 0 but queue_size is not: set queue_size = 0 to refuse at once"
                    .into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, as `runner serve --print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serializes")
    }
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<Table>().map_err(|source| ConfigError::Parse {
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
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
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
    use super::*;
    use std::collections::HashMap;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
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
        Config::load(Sources {
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
    fn file_then_environment_then_flags() {
        let file = "listen = \"127.0.0.1:1000\"\nqueue_size = 5\nmax_vms = 3\n[limits.run]\nwall_time_ms = 2000\n";
        let config = load(Some(file), &[], &[]).unwrap();
        assert_eq!(config.listen.port(), 1000);
        assert_eq!(config.queue_size, 5);
        assert_eq!(config.limits.run.wall_time_ms, 2000);
        // A partial [limits.run] keeps the other defaults.
        assert_eq!(
            config.limits.run.cpu_time_ms,
            LimitPolicy::default().run.cpu_time_ms
        );

        let env = [
            ("RUNNER_LISTEN", "127.0.0.1:2000"),
            ("RUNNER_QUEUE_SIZE", "7"),
            ("RUNNER_LIMITS_RUN_WALL_TIME_MS", "3000"),
        ];
        let config = load(Some(file), &env, &[]).unwrap();
        assert_eq!(config.listen.port(), 2000);
        assert_eq!(config.queue_size, 7);
        assert_eq!(
            config.max_vms, 3,
            "the file's value stays where env says nothing"
        );
        assert_eq!(config.limits.run.wall_time_ms, 3000);

        let config = load(
            Some(file),
            &env,
            &[
                ("listen", "127.0.0.1:3000"),
                ("limits.run.wall_time_ms", "4000"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 3000);
        assert_eq!(config.queue_size, 7);
        assert_eq!(config.limits.run.wall_time_ms, 4000);
    }

    #[test]
    fn state_dir_from_runner_home_or_its_own_variable() {
        let config = load(
            Some("state_dir = \"/from/file\""),
            &[("RUNNER_HOME", "/home")],
            &[],
        )
        .unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/home"));
        let env = [("RUNNER_HOME", "/home"), ("RUNNER_STATE_DIR", "/state")];
        assert_eq!(
            load(None, &env, &[]).unwrap().state_dir,
            PathBuf::from("/state")
        );
    }

    #[test]
    fn lists_from_commas() {
        let config = load(None, &[("RUNNER_LANGUAGES", "python, go")], &[]).unwrap();
        assert_eq!(config.languages, ["python", "go"]);
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
        assert!(e.contains("queue_sise"), "{e}");
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
    }

    #[test]
    fn printed_config_loads_back_the_same() {
        let config = load(Some("queue_size = 9"), &[], &[]).unwrap();
        let again = load(Some(&config.to_toml()), &[], &[]).unwrap();
        assert_eq!(config, again);
    }
}
