//! The `/dev` programs see: what a container runtime gives a process, and
//! nothing else.
//!
//! The kernel's devtmpfs holds a node for every device the VM has: the
//! root disk, the agent's port, `kmsg`, `mem`, `snapshot`, `fuse`, `hpet`,
//! `rtc0`, a dozen consoles, and whatever a driver adds later, each with a
//! mode the kernel picked (`fuse` and `kmsg` are open to more than root on
//! some kernels). A program should not depend on that list, nor be able to
//! reach it. So the agent keeps devtmpfs for itself, under a directory only
//! root can enter ([`AGENT_DEVICES`]), and mounts a small tmpfs on `/dev`
//! with exactly these:
//!
//! | entry | what |
//! |---|---|
//! | `null zero full random urandom tty` | character devices, mode 0666 |
//! | `pts/` | a devpts instance of its own (`newinstance,ptmxmode=0666`) |
//! | `ptmx` | `pts/ptmx`, as runc links it |
//! | `shm/` | a tmpfs, mode 1777, sized per stage like `/tmp` |
//! | `fd`, `stdin`, `stdout`, `stderr` | `/proc/self/fd`, `/proc/self/fd/0`, `1`, `2` |
//!
//! The tmpfs is `nosuid,noexec`, owned by root with mode 0755, so a program
//! can neither add nodes nor files there.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::consts::AGENT_DEVICES;
use crate::error::{AgentError, Context};
use crate::mount::mount_fs;

/// Character devices: name, major, minor.
const NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The `tty` group of Debian's base-passwd: owner of pseudo-terminals.
const TTY_GID: u32 = 5;

/// Moves the devtmpfs at `/dev` to [`AGENT_DEVICES`] and puts the
/// programs' `/dev` in its place.
pub fn set_up() -> Result<(), AgentError> {
    let parent = "/run/runner";
    DirBuilder::new()
        .mode(0o700)
        .create(parent)
        .context(|| format!("create {parent}"))?;
    mount_fs("/dev", AGENT_DEVICES, "", MsFlags::MS_MOVE, None)?;

    let sealed = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount_fs("tmpfs", "/dev", "tmpfs", sealed, Some("mode=0755,size=64k"))?;
    for &(name, major, minor) in NODES {
        let path = format!("/dev/{name}");
        mknod(
            path.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .context(|| format!("mknod {path}"))?;
        // mknod's mode went through the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .context(|| format!("chmod {path}"))?;
    }
    for &(name, target) in LINKS {
        symlink(target, format!("/dev/{name}")).context(|| format!("link /dev/{name}"))?;
    }
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        sealed,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={TTY_GID}"
        )),
    )?;
    // Where programs can write, capped per stage (see stage::Scratch).
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}
