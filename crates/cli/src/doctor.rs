//! `runner doctor`: what would be used, and what is missing.

use std::process::ExitCode;

use runner_host::Runner;
use runner_host::exec::agent;
use runner_host::vmm::accel;
use runner_host::vmm::qemu::QemuBackend;

pub async fn doctor(runner: Runner) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let state = runner
        .images()
        .dir()
        .parent()
        .unwrap_or(runner.images().dir());
    let free = nix::sys::statvfs::statvfs(state)
        .map(|s| (s.blocks_available() * s.fragment_size()) >> 20)
        .unwrap_or(0);
    outln!("state dir      {} ({free} MiB free)", state.display());
    if free < 2048 {
        problems.push(format!(
            "less than 2 GiB free in {}: image builds need it",
            state.display()
        ));
    }

    let qemu = match QemuBackend::locate() {
        Ok(path) => {
            let version = QemuBackend::version(&path)
                .await
                .unwrap_or_else(|e| e.to_string());
            outln!("qemu           {} ({version})", path.display());
            true
        }
        Err(e) => {
            outln!("qemu           missing");
            problems.push(e.to_string());
            false
        }
    };
    for (tool, package, why) in [
        (
            "mmdebstrap",
            "mmdebstrap",
            "builds root filesystems and fetches the kernel",
        ),
        ("mkfs.ext4", "e2fsprogs", "writes root filesystem images"),
        ("xz", "xz-utils", "decompresses kernel modules"),
    ] {
        match which(tool) {
            Some(path) => outln!("{tool:<14} {}", path.display()),
            None => {
                outln!("{tool:<14} missing");
                problems.push(format!(
                    "{tool} not found ({why}): install the Debian package {package}"
                ));
            }
        }
    }

    let boot_files = runner.images().boot_files(agent());
    let acceleration = match (accel::preflight(), &boot_files, qemu) {
        (Some(choice), _, _) => format!("{}: {}", choice.accel, choice.reason),
        (None, Some((kernel, initramfs)), true) => {
            let backend = runner.backend(kernel, initramfs).await?;
            format!("{}: {}", backend.info().accel, backend.info().reason)
        }
        (None, None, _) => {
            "unknown: /dev/kvm opens, and a probe VM will tell once the images are built \
             (runner image build)"
                .to_string()
        }
        (None, _, false) => "unknown: QEMU is missing".to_string(),
    };
    outln!("backend        qemu");
    outln!("acceleration   {acceleration}");

    let names: Vec<_> = runner.languages().all().to_vec();
    for (id, built) in runner.images().status(&names, agent()) {
        outln!(
            "image          {id} {}",
            if built {
                "built"
            } else {
                "missing (built on first use, or: runner image build)"
            }
        );
    }
    if problems.is_empty() {
        outln!("\nready");
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("");
        for problem in &problems {
            outln!("problem: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
