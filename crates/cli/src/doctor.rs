//! `runner doctor`: what would be used, and what is missing.

use std::process::ExitCode;

use runner_host::exec::agent;
use runner_host::vmm::{self, accel};
use runner_host::{Config, Runner};

pub async fn doctor(runner: Runner, config: &Config) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let state = runner.state().root();
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

    let vmm = config.vmm();
    let installed = match vmm::installed(&vmm).await {
        Ok(installed) => {
            let path = which(&installed.binary.to_string_lossy()).unwrap_or(installed.binary);
            outln!(
                "{:<14} {} ({})",
                installed.backend,
                path.display(),
                installed.version
            );
            Some(installed.backend)
        }
        Err(e) => {
            outln!("vmm            missing");
            problems.push(e.to_string());
            None
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
    let acceleration = match (accel::preflight(vmm.accel), &boot_files, installed) {
        (Some(choice), _, _) => format!("{}: {}", choice.accel, choice.reason),
        (None, Some((kernel, initramfs)), Some(_)) => {
            let backend = runner.backend(kernel, initramfs).await?;
            format!("{}: {}", backend.info().accel, backend.info().reason)
        }
        (None, None, _) => {
            "unknown: /dev/kvm opens, and a probe VM will tell once the images are built \
             (runner image build)"
                .to_string()
        }
        (None, _, None) => "unknown: the VMM is missing".to_string(),
    };
    outln!("backend        {}", installed.unwrap_or("none"));
    outln!("acceleration   {acceleration}");

    let names: Vec<_> = runner.enabled_languages().into_iter().cloned().collect();
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
    // A snapshot made for another agent or other images is no snapshot of
    // these: executions boot cold until it is made again.
    if config.snapshots && boot_files.is_some() && installed.is_some() {
        let languages = runner.enabled_languages();
        for (id, ready) in runner.snapshot_readiness(&languages).await? {
            outln!(
                "snapshot       {id} {}",
                if ready {
                    "ready"
                } else {
                    "missing or damaged: executions boot cold until `runner snapshot create` \
                     (or a server start) makes it"
                }
            );
        }
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

/// Where `tool` is: itself if it is a path, else the first match on `PATH`.
fn which(tool: &str) -> Option<std::path::PathBuf> {
    if tool.contains('/') {
        return Some(tool.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
