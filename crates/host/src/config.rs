//! What the engine needs of the configuration: one typed [`Config`] of
//! its languages, limits, VMs, images, snapshots, pools, sessions and
//! network. The binary builds it (from built-in defaults, a TOML file,
//! `RUNNER_*` environment variables and flags) and hands it down; this
//! library reads no environment variables and no file itself. A server's
//! own settings (where it listens, its queue and keys) are the server's.
//!
//! Every setting has a key (`max_vms`, `limits.run.wall_time_ms`) that is
//! its path in the TOML file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compile_cache::CompileCacheConfig;
use crate::exec::LimitPolicy;
use crate::image::{KernelChoice, KernelSpec};
use crate::lang::Languages;
use crate::net::NetworkConfig;
use crate::pool::PoolConfig;
use crate::session::SessionConfig;
use crate::vmm::placement::{CpuList, HugePages};
use crate::vmm::{AccelMode, BackendKind, Machine, VmmConfig};

/// Read when no configuration file is named, if it exists.
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
    /// What runs the sandboxes: `qemu` (a microVM, KVM where it works,
    /// else TCG) or `gvisor` (Debian's `runsc`).
    pub backend: BackendKind,
    /// `qemu-system-x86_64` to use; empty for the one on `PATH`.
    pub qemu: String,
    /// gVisor's `runsc` to use; empty for the one on `PATH`.
    pub runsc: String,
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
    /// Sessions (`runner serve`): their defaults and maximums.
    pub sessions: SessionConfig,
    /// What executions may reach of the network, and how much (none by
    /// default).
    pub network: NetworkConfig,
    /// What compiles made, kept to skip the same compile again.
    pub compile_cache: CompileCacheConfig,
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
            backend: BackendKind::Auto,
            qemu: String::new(),
            runsc: String::new(),
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
            sessions: SessionConfig::default(),
            network: NetworkConfig::default(),
            compile_cache: CompileCacheConfig::default(),
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
            backend: self.backend,
            qemu: (!self.qemu.is_empty()).then(|| PathBuf::from(&self.qemu)),
            runsc: (!self.runsc.is_empty()).then(|| PathBuf::from(&self.runsc)),
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

/// An engine setting that cannot work, or settings that cannot work
/// together, named by their keys.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
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

    /// Refuses settings that cannot work, naming their keys.
    pub fn check(&self) -> Result<(), ConfigError> {
        let policy = &self.limits;
        for (name, set) in [("compile", &policy.compile), ("run", &policy.run)] {
            let over = set
                .named()
                .into_iter()
                .zip(policy.max.named())
                .find(|((_, value), (_, max))| value > max);
            if let Some(((field, value), (_, max))) = over {
                return Err(ConfigError(format!(
                    "limits.{name}.{field} = {value} is above limits.max.{field} = {max}"
                )));
            }
        }
        for (key, list) in [("vm_cpus", &self.vm_cpus), ("pool_cpus", &self.pool_cpus)] {
            if let Some(cpu) = list.not_allowed() {
                return Err(ConfigError(format!(
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
            return Err(ConfigError(
                "kernel = \"debian\" cannot boot on machine = \"microvm\": Debian's cloud \
                 kernel does not find microvm's devices; use machine = \"q35\" or kernel = \"runner\""
                    .into(),
            ));
        }
        self.network.check().map_err(ConfigError)?;
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
                return Err(ConfigError(format!(
                    "sessions.{key} = {default} must be above 0 and at most its maximum, {max}"
                )));
            }
        }
        let languages = self
            .all_languages()
            .map_err(|e| ConfigError(crate::error_chain(&e)))?;
        for (key, names) in [
            ("languages", &self.languages),
            ("pool.languages", &self.pool.languages),
        ] {
            for name in names {
                languages
                    .get(name)
                    .map_err(|e| ConfigError(format!("{key}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The built-in languages and those of `languages_dir`.
    pub fn all_languages(&self) -> Result<Languages, crate::lang::LanguageError> {
        let dir = Some(self.languages_dir.as_path()).filter(|d| !d.as_os_str().is_empty());
        Languages::with_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Config {
        Config::with_state_dir("/nonexistent")
    }

    fn refused(config: Config, says: &[&str]) {
        let e = config.check().unwrap_err().to_string();
        for part in says {
            assert!(e.contains(part), "{e} does not say {part:?}");
        }
    }

    #[test]
    fn the_defaults_work() {
        defaults().check().unwrap();
    }

    #[test]
    fn debians_kernel_on_microvm_is_refused_before_a_vm_boots() {
        refused(
            Config {
                kernel: KernelChoice::Debian,
                machine: Machine::Microvm,
                ..defaults()
            },
            &["q35", "runner"],
        );
        assert!(
            defaults()
                .with_guest(KernelChoice::Debian, Machine::Microvm)
                .is_err()
        );
        let microvm = defaults()
            .with_guest(KernelChoice::Runner, Machine::Microvm)
            .unwrap();
        assert_eq!(microvm.machine, Machine::Microvm);
        assert!(
            defaults()
                .with_guest(KernelChoice::Debian, Machine::Q35)
                .is_ok()
        );
    }

    #[test]
    fn defaults_may_not_pass_their_maximums() {
        let mut config = defaults();
        config.limits.run.wall_time_ms = 999_999_999;
        refused(
            config,
            &["limits.run.wall_time_ms", "limits.max.wall_time_ms"],
        );
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
        let config = Config {
            vm_cpus: "0".parse().unwrap(),
            ..defaults()
        };
        config.check().unwrap();
        assert_eq!(config.vmm().vm_cpus.cpus(), [0]);
        assert_eq!(config.machine_vms(), 1, "one VM per CPU of vm_cpus");
        assert!(config.vmm().pool_cpus.is_empty());
        refused(
            Config {
                pool_cpus: "0,1000".parse().unwrap(),
                ..defaults()
            },
            &["pool_cpus", "CPU 1000", "may use"],
        );
    }

    #[test]
    fn unknown_languages_are_refused_with_the_known_ones() {
        let mut config = defaults();
        config.languages = vec!["python".into(), "cobol".into()];
        refused(config, &["languages", "cobol"]);
        let mut config = defaults();
        config.pool.languages = vec!["fortran".into()];
        refused(config, &["pool.languages", "fortran"]);
        let mut config = defaults();
        config.languages = vec!["py".into(), "bash".into()];
        config.check().unwrap();
    }

    #[test]
    fn sessions_defaults_stay_within_their_maximums() {
        let mut config = defaults();
        config.sessions.idle_timeout_s = config.sessions.max_idle_timeout_s + 1;
        refused(config, &["sessions.idle_timeout_s"]);
    }
}
