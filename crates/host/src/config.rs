//! The configuration of every command: one typed [`Config`] built from
//! built-in defaults, then a TOML file, then `RUNNER_*` environment
//! variables, then flags; each overrides the one before.
//!
//! `runner run`, `serve`, `bench`, `image` and `snapshot` all load it the
//! same way and hand it down, so a limit in `/etc/runner/config.toml`
//! applies to all of them. This library reads no environment variables
//! itself: the binary passes a lookup function in [`Sources`].
//!
//! Every setting has a key (`listen`, `queue_size`, `limits.run.wall_time_ms`)
//! that is its path in the TOML file. Its environment variable is the key in
//! capitals with `_` for `.`, after `RUNNER_` (`RUNNER_QUEUE_SIZE`,
//! `RUNNER_LIMITS_RUN_WALL_TIME_MS`), and `--set KEY=VALUE` sets it from the
//! command line. The common ones also have their own flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::exec::LimitPolicy;
use crate::image::{KernelChoice, KernelSpec};
use crate::lang::Languages;
use crate::net::NetworkConfig;
use crate::pool::PoolConfig;
use crate::session::SessionConfig;
use crate::vmm::placement::{CpuList, HugePages};
use crate::vmm::{AccelMode, Machine, VmmConfig};

/// Read when `--config` and `RUNNER_CONFIG` are not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/runner/config.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Images, snapshots and per-execution run directories.
    pub state_dir: PathBuf,
    /// Languages that run here; empty for every language.
    pub languages: Vec<String>,
    /// A directory of the operator's own language files (`*.toml`, as in
    /// the repository's `languages/`), added to the built-in languages;
    /// empty for none.
    pub languages_dir: PathBuf,
    /// Per-stage defaults and maximums of execution limits.
    pub limits: LimitPolicy,
    /// Restore VMs from snapshots where they exist; `false` boots every VM
    /// cold.
    pub snapshots: bool,
    /// Snapshots hold the language's prestarted runtime where it has one.
    pub prestart: bool,
    /// `qemu-system-x86_64` to use; empty for the one on `PATH`.
    pub qemu: String,
    /// `auto` uses KVM when a probe VM boots under it, else TCG; `kvm` or
    /// `tcg` skip the probe.
    pub accel: AccelMode,
    /// The guest kernel: `runner`, built here from Debian's kernel source
    /// with Runner Codes' options (see `image/kernel/runner.config`), or
    /// `debian`, Debian's cloud kernel package.
    pub kernel: KernelChoice,
    /// Boot the kernel's debug flavour, which prints its messages on the
    /// console (shown in boot errors and by `runner doctor --debug-kernel`).
    pub kernel_debug: bool,
    /// The machine QEMU emulates: `q35` or `microvm`.
    pub machine: Machine,
    /// Extra guest kernel arguments, space-separated (for experiments).
    pub kernel_args: String,
    /// The Debian mirror guest images are built from; empty for the one
    /// this machine's apt sources use.
    pub debian_mirror: String,
    /// Host memory kept for everything but VMs.
    pub reserved_memory_mib: u64,
    /// VMs at once; 0 means one per CPU (of `vm_cpus` when given).
    pub max_vms: usize,
    /// Executions of every runner process on this state directory share
    /// `max_vms` slots (see [`crate::capacity`]); `false` for benchmarks
    /// that want their own rule.
    pub shared_capacity: bool,
    /// Host CPUs that VMs running executions use, as `0-3,6`; empty for
    /// every CPU this process may use. Each execution's vCPU gets one of
    /// them, the VM's other threads share them all.
    pub vm_cpus: CpuList,
    /// Host CPUs of warm pools' VMs, from their restore until an execution
    /// takes them; empty for `vm_cpus`. Disjoint from `vm_cpus`, refills
    /// and warm-ups never take CPU time from executions.
    pub pool_cpus: CpuList,
    /// `transparent`: guest memory uses the host's transparent huge pages
    /// where it has them; `off`: 4 KiB pages only.
    pub huge_pages: HugePages,
    /// Bind each VM's memory to the NUMA node of its CPUs (`vm_cpus`, or
    /// `pool_cpus` for a pool's VM) where they lie within one node.
    pub numa_bind: bool,
    /// Warm pools of restored VMs (`runner serve`; languages with a snapshot
    /// only).
    pub pool: PoolConfig,
    /// Address and port the API listens on (`runner serve`).
    pub listen: SocketAddr,
    /// Build missing images at start-up (the server is not ready until then).
    pub prepare_images: bool,
    /// Make missing snapshots at start-up, after the images (executions boot
    /// cold until they exist).
    pub prepare_snapshots: bool,
    /// Requests that may wait for capacity; more get 429 at once.
    pub queue_size: usize,
    /// How long a request waits for capacity before it gets 429.
    pub queue_timeout_ms: u64,
    /// Largest request body of an execution.
    pub max_body_bytes: usize,
    /// Largest request body of a judge submission (its tests' data may be
    /// up to 64 MiB).
    pub max_submission_bytes: usize,
    /// After SIGTERM, how long running executions may go on before they are
    /// killed.
    pub shutdown_timeout_ms: u64,
    /// Sessions (`runner serve`): their defaults and maximums.
    pub sessions: SessionConfig,
    /// What executions may reach of the network, and how much (none by
    /// default).
    pub network: NetworkConfig,
    /// The playground page at `/` of `runner serve`: `auto` serves it when
    /// the server listens on a loopback address only, `on` always, `off`
    /// never.
    pub playground: Switch,
    /// API keys of `runner serve`, in the file only (`[[api_keys]]`). With
    /// none, the server answers clients on this machine only; with some,
    /// every request but `/healthz` needs `Authorization: Bearer KEY`.
    pub api_keys: Vec<ApiKey>,
}

/// On, off, or decided by the situation (see where it is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    Auto,
    On,
    Off,
}

/// An API key of `runner serve`, as the configuration holds it: never the
/// key itself, only its SHA-256 (`runner key new` makes a key and prints
/// this entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds the key: the owner of the sessions it creates, in logs.
    pub name: String,
    /// The key's SHA-256, in lowercase hex.
    pub sha256: String,
    /// Sessions this key may have running at once; `sessions.max_per_owner`
    /// when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// Sessions this key may have paused at once;
    /// `sessions.max_paused_per_owner` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_paused_sessions: Option<usize>,
}

impl Config {
    /// VMs at once on this machine: `max_vms`, or one per CPU (of
    /// `vm_cpus` when given).
    pub fn machine_vms(&self) -> usize {
        if self.max_vms > 0 {
            self.max_vms
        } else if !self.vm_cpus.is_empty() {
            self.vm_cpus.cpus().len()
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Whether `runner serve` serves the playground: `auto` for a loopback
    /// listener only.
    pub fn playground_served(&self) -> bool {
        match self.playground {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => self.listen.ip().is_loopback(),
        }
    }

    /// The built-in defaults. The state directory is `/var/lib/runner` for
    /// root and the user's cache directory (`XDG_CACHE_HOME` or
    /// `~/.cache`, looked up with `env`) for everyone else.
    pub fn defaults(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let state_dir = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib/runner")
        } else {
            env("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join("runner")
        };
        Self {
            state_dir,
            languages: Vec::new(),
            languages_dir: PathBuf::new(),
            limits: LimitPolicy::default(),
            snapshots: true,
            prestart: true,
            qemu: String::new(),
            accel: AccelMode::Auto,
            kernel: KernelChoice::Runner,
            kernel_debug: false,
            machine: Machine::Q35,
            kernel_args: String::new(),
            debian_mirror: String::new(),
            reserved_memory_mib: 2048,
            max_vms: 0,
            shared_capacity: true,
            vm_cpus: CpuList::default(),
            pool_cpus: CpuList::default(),
            huge_pages: HugePages::Transparent,
            numa_bind: true,
            pool: PoolConfig::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prepare_images: true,
            prepare_snapshots: true,
            queue_size: 64,
            queue_timeout_ms: 60_000,
            max_body_bytes: 8 << 20,
            max_submission_bytes: 96 << 20,
            shutdown_timeout_ms: 30_000,
            sessions: SessionConfig::default(),
            network: NetworkConfig::default(),
            playground: Switch::Auto,
            api_keys: Vec::new(),
        }
    }

    /// The defaults with everything under `state_dir`: for tests and
    /// programs that build their configuration in code.
    pub fn with_state_dir(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            ..Self::defaults(&|_| None)
        }
    }

    /// The kernel guests boot.
    pub fn kernel_spec(&self) -> KernelSpec {
        KernelSpec {
            choice: self.kernel,
            debug: self.kernel_debug,
        }
    }

    /// What the VMM backends need of it.
    pub fn vmm(&self) -> VmmConfig {
        VmmConfig {
            qemu: (!self.qemu.is_empty()).then(|| PathBuf::from(&self.qemu)),
            accel: self.accel,
            machine: self.machine,
            kernel_args: self
                .kernel_args
                .split_whitespace()
                .map(String::from)
                .collect(),
            vm_cpus: self.vm_cpus.clone(),
            pool_cpus: self.pool_cpus.clone(),
            huge_pages: self.huge_pages,
            numa_bind: self.numa_bind,
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
        let defaults =
            Value::try_from(Config::defaults(sources.env)).expect("the defaults serialize");
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

        // RUNNER_HOME is the state directory's older name.
        if let Some(home) = (sources.env)("RUNNER_HOME").filter(|v| !v.is_empty()) {
            table.insert("state_dir".into(), Value::String(home));
        }
        for (key, default) in &leaves {
            let name = format!("RUNNER_{}", key.replace('.', "_").to_uppercase());
            if key == "api_keys" {
                if (sources.env)(&name).is_some() {
                    return Err(ConfigError::Value {
                        origin: format!("environment variable {name}"),
                        message: "API keys are set in the configuration file only ([[api_keys]], see `runner key new`)".into(),
                    });
                }
                continue;
            }
            if let Some(raw) = (sources.env)(&name) {
                let value = parse_value(default, &raw).map_err(|message| ConfigError::Value {
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
        Config::from_table(table)
    }

    /// The same configuration with one setting changed as `--set key=raw`
    /// changes it.
    pub fn with_setting(&self, key: &str, raw: &str) -> Result<Config, ConfigError> {
        let Ok(Value::Table(mut table)) = Value::try_from(self) else {
            unreachable!("a configuration serializes to a table")
        };
        let value = flag_value(&leaves(&table), key, raw)?;
        set(&mut table, key, value);
        Config::from_table(table)
    }

    fn from_table(table: Table) -> Result<Config, ConfigError> {
        // Named by its key: "pool.warm_up: invalid type ...".
        let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Value {
                origin: "configuration".into(),
                message: format!("{}: {}", e.path(), e.inner().message()),
            },
        )?;
        config.check()?;
        Ok(config)
    }

    /// The same configuration with guests booting `kernel` on `machine`,
    /// if that pair can boot.
    pub fn with_guest(
        &self,
        kernel: KernelChoice,
        machine: Machine,
    ) -> Result<Config, ConfigError> {
        let config = Config {
            kernel,
            machine,
            ..self.clone()
        };
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
        if self.max_body_bytes == 0 || self.max_submission_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes and max_submission_bytes must be above 0".into(),
            ));
        }
        for (key, list) in [("vm_cpus", &self.vm_cpus), ("pool_cpus", &self.pool_cpus)] {
            if let Some(cpu) = list.not_allowed() {
                return Err(ConfigError::Invalid(format!(
                    "{key} = \"{list}\" names CPU {cpu}, which this process may not run on \
                     (it may use {})",
                    CpuList::allowed()
                )));
            }
        }
        if self.kernel == KernelChoice::Debian && self.machine == Machine::Microvm {
            // microvm boots without ACPI here, so its devices are named on
            // the command line (virtio_mmio.device=), which Debian's cloud
            // kernel does not read.
            return Err(ConfigError::Invalid(
                "kernel = \"debian\" cannot boot on machine = \"microvm\": Debian's cloud \
                 kernel does not find microvm's devices; use machine = \"q35\" or kernel = \"runner\""
                    .into(),
            ));
        }
        self.network.check().map_err(ConfigError::Invalid)?;
        let sessions = &self.sessions;
        for (default, max, key) in [
            (
                sessions.idle_timeout_s,
                sessions.max_idle_timeout_s,
                "idle_timeout_s",
            ),
            (sessions.lifetime_s, sessions.max_lifetime_s, "lifetime_s"),
            (
                sessions.default_disk_mib,
                sessions.max_disk_mib,
                "default_disk_mib",
            ),
        ] {
            if default == 0 || default > max {
                return Err(ConfigError::Invalid(format!(
                    "sessions.{key} = {default} must be above 0 and at most its maximum, {max}"
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for key in &self.api_keys {
            let valid_hash = key.sha256.len() == 64
                && key
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if key.name.is_empty() || !valid_hash {
                return Err(ConfigError::Invalid(format!(
                    "api_keys: {:?} needs a name and a sha256 of 64 lowercase hex digits (`runner key new` prints one)",
                    key.name
                )));
            }
            if !seen.insert(&key.name) || !seen.insert(&key.sha256) {
                return Err(ConfigError::Invalid(format!(
                    "api_keys: {:?} appears twice (by name or by key)",
                    key.name
                )));
            }
        }
        let languages = self
            .all_languages()
            .map_err(|e| ConfigError::Invalid(crate::error_chain(&e)))?;
        for (key, names) in [
            ("languages", &self.languages),
            ("pool.languages", &self.pool.languages),
        ] {
            for name in names {
                languages
                    .get(name)
                    .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The built-in languages and those of `languages_dir`.
    pub fn all_languages(&self) -> Result<Languages, crate::lang::LanguageError> {
        let dir = Some(self.languages_dir.as_path()).filter(|d| !d.as_os_str().is_empty());
        Languages::with_dir(dir)
    }

    /// The configuration as TOML, as `--print-config` shows it; it loads
    /// back as the same configuration.
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

/// The value `--set key=raw` gives, in the type of `key` among `leaves`.
fn flag_value(leaves: &[(String, Value)], key: &str, raw: &str) -> Result<Value, ConfigError> {
    let origin = format!("setting {key}");
    if key == "api_keys" {
        return Err(ConfigError::Value {
            origin,
            message: "API keys are set in the configuration file only ([[api_keys]]), so that they stay out of process listings".into(),
        });
    }
    let Some((_, default)) = leaves.iter().find(|(k, _)| k == key) else {
        let known: Vec<&str> = leaves.iter().map(|(k, _)| k.as_str()).collect();
        return Err(ConfigError::Value {
            origin,
            message: format!("no such setting; settings are {}", known.join(", ")),
        });
    };
    parse_value(default, raw).map_err(|message| ConfigError::Value { origin, message })
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
    fn api_keys_come_from_the_file_only_and_are_checked() {
        let hash = "ab".repeat(32);
        let file =
            format!("[[api_keys]]\nname = \"alice\"\nsha256 = \"{hash}\"\nmax_sessions = 2\n");
        let config = load(Some(&file), &[], &[]).unwrap();
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.api_keys[0].max_sessions, Some(2));
        let again = load(Some(&config.to_toml()), &[], &[]).unwrap();
        assert_eq!(again, config, "--print-config loads back with its keys");

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

        for (bad, why) in [
            (format!("{file}{file}"), "appears twice"),
            (file.replace(&hash, "secret"), "64 lowercase hex"),
            (
                file.replace(&hash, &hash.to_uppercase()),
                "64 lowercase hex",
            ),
            (file.replace("alice", ""), "needs a name"),
        ] {
            let e = load(Some(&bad), &[], &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn debians_kernel_on_microvm_is_refused_before_a_vm_boots() {
        let e = load(None, &[], &[("kernel", "debian"), ("machine", "microvm")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("q35") && e.contains("runner"), "{e}");
        for (kernel, machine) in [("runner", "microvm"), ("debian", "q35")] {
            let config = load(None, &[], &[("kernel", kernel), ("machine", machine)]).unwrap();
            assert_eq!(config.machine.to_string(), machine);
        }
        let config = load(None, &[], &[]).unwrap();
        assert!(
            config
                .with_guest(KernelChoice::Debian, Machine::Microvm)
                .is_err()
        );
        let microvm = config
            .with_guest(KernelChoice::Runner, Machine::Microvm)
            .unwrap();
        assert_eq!(microvm.machine, Machine::Microvm);
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
    fn engine_settings_keep_their_variables() {
        let env = [
            ("RUNNER_SNAPSHOTS", "off"),
            ("RUNNER_PRESTART", "off"),
            ("RUNNER_QEMU", "/opt/qemu/bin/qemu-system-x86_64"),
            ("RUNNER_ACCEL", "tcg"),
            ("RUNNER_KERNEL_ARGS", "loglevel=7  debug"),
            ("RUNNER_DEBIAN_MIRROR", "http://mirror.example/debian"),
        ];
        let config = load(None, &env, &[]).unwrap();
        assert!(!config.snapshots && !config.prestart);
        assert_eq!(config.debian_mirror, "http://mirror.example/debian");
        let vmm = config.vmm();
        assert_eq!(
            vmm.qemu,
            Some(PathBuf::from("/opt/qemu/bin/qemu-system-x86_64"))
        );
        assert_eq!(vmm.accel, AccelMode::Tcg);
        assert_eq!(vmm.kernel_args, ["loglevel=7", "debug"]);
        let defaults = load(None, &[], &[]).unwrap();
        assert!(defaults.snapshots && defaults.prestart);
        assert_eq!(defaults.vmm().qemu, None, "found on PATH");
        assert_eq!(defaults.accel, AccelMode::Auto);
        let e = load(None, &[("RUNNER_ACCEL", "hvf")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hvf") && e.contains("tcg"), "{e}");
    }

    #[test]
    fn the_state_dir_of_a_user_is_in_their_cache() {
        if nix::unistd::geteuid().is_root() {
            let config = Config::defaults(&|_| None);
            assert_eq!(config.state_dir, PathBuf::from("/var/lib/runner"));
        } else {
            let env = |name: &str| (name == "HOME").then(|| "/home/u".to_string());
            let config = Config::defaults(&env);
            assert_eq!(config.state_dir, PathBuf::from("/home/u/.cache/runner"));
        }
    }

    #[test]
    fn cpu_lists_must_name_cpus_this_process_may_use() {
        let config = load(Some("vm_cpus = \"0\"\npool_cpus = \"\""), &[], &[]).unwrap();
        assert_eq!(config.vmm().vm_cpus.cpus(), [0]);
        assert_eq!(config.machine_vms(), 1, "one VM per CPU of vm_cpus");
        assert!(config.vmm().pool_cpus.is_empty());
        let e = load(Some("pool_cpus = \"0,1000\""), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pool_cpus") && e.contains("CPU 1000") && e.contains("may use"),
            "{e}"
        );
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
        let config_with_defaults = || load(None, &[], &[]).unwrap();
        let defaults = config_with_defaults().vmm();
        assert_eq!(defaults.huge_pages, HugePages::Transparent);
        assert!(defaults.numa_bind);
        let config = load(Some("huge_pages = \"off\""), &[], &[("numa_bind", "false")])
            .unwrap()
            .vmm();
        assert_eq!(config.huge_pages, HugePages::Off);
        assert!(!config.numa_bind);
        let changed = config_with_defaults()
            .with_setting("huge_pages", "off")
            .unwrap();
        assert_eq!(changed.huge_pages, HugePages::Off);
        let e = config_with_defaults()
            .with_setting("huge_pages", "sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("huge_pages: unknown variant"), "{e}");
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
        let e = load(Some("[pool]\nlanguages = [\"fortran\"]"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.languages") && e.contains("fortran"), "{e}");
        assert!(load(None, &[("RUNNER_LANGUAGES", "py, bash")], &[]).is_ok());
    }

    #[test]
    fn printed_config_loads_back_the_same() {
        let config = load(Some("queue_size = 9"), &[], &[]).unwrap();
        let again = load(Some(&config.to_toml()), &[], &[]).unwrap();
        assert_eq!(config, again);
    }
}
