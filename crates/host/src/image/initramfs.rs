//! The initramfs: the agent as `/init`, the kernel modules it loads and their
//! order. Built per kernel and agent, shared by every language.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::cpio::Archive;
use super::{Agent, ImageError, KernelImage};

pub const FILE: &str = "initramfs.cpio";

#[derive(Serialize)]
struct Recipe {
    kernel: String,
    agent_sha256: String,
}

pub(super) fn recipe(kernel_id: &str, agent: &Agent) -> impl Serialize {
    Recipe {
        kernel: kernel_id.to_string(),
        agent_sha256: agent.sha256().to_string(),
    }
}

pub(super) fn build(kernel: &KernelImage, agent: &Agent, out: &Path) -> Result<String, ImageError> {
    let mut archive = Archive::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "mnt",
        "etc",
        "etc/runner",
        "lib",
        "lib/modules",
    ] {
        archive.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init's stdio before anything mounts.
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("init", 0o755, agent.bytes());
    let mut order = String::new();
    for (name, path) in kernel.modules()? {
        let image = fs::read(&path).map_err(ImageError::io("read", &path))?;
        archive.file(&format!("lib/modules/{name}.ko"), 0o644, &image);
        order += &name;
        order.push('\n');
    }
    archive.file("etc/runner/modules", 0o644, order.as_bytes());
    let path = out.join(FILE);
    fs::write(&path, archive.finish()).map_err(ImageError::io("write", &path))?;
    Ok(format!("agent {}", env!("CARGO_PKG_VERSION")))
}
