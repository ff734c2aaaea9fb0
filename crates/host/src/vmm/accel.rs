//! Choosing between KVM and TCG.
//!
//! An openable `/dev/kvm` is not proof of a usable KVM: under some nested
//! setups (PVM) it opens, creates VMs, and then runs a normal guest only by
//! slow instruction emulation until it fails. So KVM is used only when a
//! real guest — our kernel and agent, in probe mode — says hello under it
//! within a few seconds. The verdict is cached per host boot, QEMU and kernel.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_protocol::Frame;
use serde::{Deserialize, Serialize};

use super::qemu::QemuBackend;
use super::{AccelMode, Backend, Installed, VmSpec, VmmConfig};

/// How a VM's CPU runs: in hardware (KVM) or emulated (TCG), as results
/// report it.
pub use runner_wire::Accel;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// A real KVM boots the probe in well under a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, PartialEq)]
struct CacheKey {
    boot_id: String,
    qemu: String,
    kernel: PathBuf,
    initramfs: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    key: CacheKey,
    choice: AccelChoice,
}

/// Quick checks that need no images: the `accel` setting and whether
/// `/dev/kvm` opens. `None` means only a probe can tell.
pub fn preflight(mode: AccelMode) -> Option<AccelChoice> {
    match mode {
        AccelMode::Tcg => {
            return Some(AccelChoice {
                accel: Accel::Tcg,
                reason: "the accel setting is tcg".into(),
            });
        }
        AccelMode::Kvm => {
            return Some(AccelChoice {
                accel: Accel::Kvm,
                reason: "the accel setting is kvm".into(),
            });
        }
        AccelMode::Auto => {}
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Some(AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot be opened ({e}); using TCG software emulation"),
        });
    }
    None
}

/// The cached verdict for this host boot, QEMU and guest, if there is one.
pub(super) fn cached(
    cache: &Path,
    qemu: &str,
    kernel: &Path,
    initramfs: &Path,
) -> Option<AccelChoice> {
    let cached: Cached = serde_json::from_slice(&std::fs::read(cache).ok()?).ok()?;
    (cached.key == cache_key(qemu, kernel, initramfs)).then_some(cached.choice)
}

/// Decides the acceleration, probing KVM if needed.
pub(super) async fn choose(
    config: &VmmConfig,
    installed: &Installed,
    kernel: &Path,
    initramfs: &Path,
    run_dir: &Path,
    cache: &Path,
) -> AccelChoice {
    if let Some(choice) = preflight(config.accel) {
        return choice;
    }
    if let Some(choice) = cached(cache, &installed.version, kernel, initramfs) {
        return choice;
    }
    let choice = probe(installed, kernel, initramfs, run_dir).await;
    let entry = Cached {
        key: cache_key(&installed.version, kernel, initramfs),
        choice: choice.clone(),
    };
    let _ = std::fs::write(cache, serde_json::to_vec(&entry).expect("serialises"));
    choice
}

fn cache_key(qemu: &str, kernel: &Path, initramfs: &Path) -> CacheKey {
    CacheKey {
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string(),
        qemu: qemu.to_string(),
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
    }
}

async fn probe(
    installed: &Installed,
    kernel: &Path,
    initramfs: &Path,
    run_dir: &Path,
) -> AccelChoice {
    let backend = QemuBackend::new(
        installed.clone(),
        &VmmConfig::default(),
        AccelChoice {
            accel: Accel::Kvm,
            reason: "probe".into(),
        },
    );
    let spec = VmSpec {
        id: format!("kvm-probe-{}", std::process::id()),
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        rootfs: None,
        memory_mib: 128,
        vcpus: 1,
        kernel_args: vec!["runner.probe".into()],
        run_dir: run_dir.join(format!("{}.kvm-probe", std::process::id())),
        memory: super::Memory::Private,
        cpus: super::placement::CpuList::default(),
        background: false,
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut vm = backend.start(spec).await.map_err(|e| e.to_string())?;
        let hello = vm.channel().recv().await;
        let tail = vm.console_tail();
        vm.destroy().await;
        match hello {
            Ok(Frame::Hello(_)) => Ok(()),
            Ok(other) => Err(format!("unexpected {:?} frame", other.kind())),
            Err(e) => Err(format!("{e}; console: {tail}")),
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => AccelChoice {
            accel: Accel::Kvm,
            reason: "a probe guest booted under KVM".into(),
        },
        Ok(Err(e)) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm opens but a probe guest failed under KVM ({e}); using TCG"),
        },
        Err(_) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!(
                "/dev/kvm opens but a probe guest did not boot under KVM within {} s \
                 (emulated or nested KVM); using TCG",
                PROBE_TIMEOUT.as_secs()
            ),
        },
    }
}
