//! Mounting, and waiting for a device to appear: what bringing up the
//! machine and its `/dev` take.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use crate::error::{AgentError, Context};

/// Mounts `source` on `target`, making `target` first if it is missing.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), AgentError> {
    let _ = fs::create_dir_all(target);
    let fstype = (!fstype.is_empty()).then_some(fstype);
    mount(Some(source), target, fstype, flags, data)
        .context(|| format!("mount {source} on {target}"))
}

/// Device nodes appear when the driver has probed, which may be after its
/// module finished loading.
pub fn wait_for(path: &str, timeout: Duration) -> Result<(), AgentError> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > timeout {
            return Err(format!("{path} did not appear within {timeout:?}").into());
        }
        sleep(Duration::from_millis(2));
    }
    Ok(())
}
