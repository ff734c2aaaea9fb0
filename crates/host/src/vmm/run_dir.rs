//! A VM's or sandbox's directory under the state directory: its sockets,
//! bundle and scratch files, removed with everything in it when dropped.

use std::fs;
use std::path::PathBuf;

use super::VmmError;

/// The VM's directory under the state dir; removed with everything in it
/// when dropped, whatever path the execution took.
pub(super) struct RunDir {
    pub(super) path: PathBuf,
}

impl RunDir {
    pub(super) fn create(path: PathBuf) -> Result<Self, VmmError> {
        fs::create_dir_all(&path).map_err(|source| VmmError::Io {
            what: "create",
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
