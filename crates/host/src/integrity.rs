//! Fingerprints of the files VMs boot and restore from (kernel, initramfs,
//! root filesystems, snapshot memory and device state), recorded when they
//! are made and checked before a VM uses them, so that a damaged file is
//! found and made again instead of booted or restored.
//!
//! Hashing a whole root filesystem or a 576 MiB memory file before every
//! execution would cost more than the restore it guards, so a fingerprint
//! is the file's size and the SHA-256 of a sample: the whole file up to
//! [`WHOLE`] bytes (a snapshot's device state, ~420 KiB), otherwise
//! [`PIECES`] pieces of [`PIECE`] bytes spread evenly from its first byte
//! to its last. That finds a truncated or extended file, a damaged header
//! or tail and damage to a sampled piece, not every flipped bit. A file
//! checked once is not read again by the same process until it changes
//! (device, inode, size, mtime and ctime).
//!
//! Each fingerprint names its sampling [`Method`], so that a later build
//! that samples otherwise still checks what an earlier one recorded by the
//! earlier method, instead of finding every image and snapshot damaged.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files up to this size are hashed whole.
pub const WHOLE: u64 = 1 << 20;
/// Bytes in one sampled piece of a larger file.
pub const PIECE: u64 = 4096;
/// Pieces sampled from a larger file.
pub const PIECES: u64 = 64;

/// How a fingerprint's sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The whole file up to [`WHOLE`] bytes, else [`PIECES`] pieces of
    /// [`PIECE`] bytes spread evenly from its first byte to its last. The
    /// records made before methods were named took their samples so.
    #[default]
    SampleV1,
    /// A method of a later build than this one: only the size is checked.
    #[serde(other)]
    Unknown,
}

/// The method this build samples by.
pub const METHOD: Method = Method::SampleV1;

/// What a file was when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How `sample_sha256` was taken.
    #[serde(default)]
    pub method: Method,
    pub size: u64,
    /// SHA-256 of the sampled pieces, in hex.
    pub sample_sha256: String,
}

/// Fingerprints of the files of one image or snapshot, by file name.
pub type Fingerprints = BTreeMap<String, Fingerprint>;

/// How a file differs from its fingerprint.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("{file} is missing or unreadable: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file} is {actual} bytes, it was made {expected}")]
    Size {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}'s content changed since it was made")]
    Content { file: String },
    #[error("its record is unreadable: {0}")]
    Record(String),
}

impl Fingerprint {
    /// Takes `path`'s fingerprint.
    pub fn of(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            method: METHOD,
            size,
            sample_sha256: sample(&file, size)?,
        })
    }
}

/// Fingerprints of `names`, files in `dir`.
pub fn take(dir: &Path, names: &[&str]) -> io::Result<Fingerprints> {
    names
        .iter()
        .map(|name| Ok((name.to_string(), Fingerprint::of(&dir.join(name))?)))
        .collect()
}

/// Checks every file in `prints` (names in `dir`) against its fingerprint.
pub fn check(dir: &Path, prints: &Fingerprints) -> Result<(), Damage> {
    prints
        .iter()
        .try_for_each(|(name, print)| check_file(&dir.join(name), name, print))
}

/// A file as a check saw it: device, inode, size, mtime and ctime.
type Seen = (u64, u64, u64, i64, i64, i64, i64);

fn check_file(path: &Path, name: &str, print: &Fingerprint) -> Result<(), Damage> {
    let unreadable = |source| Damage::Unreadable {
        file: name.to_string(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.len() != print.size {
        return Err(Damage::Size {
            file: name.to_string(),
            expected: print.size,
            actual: meta.len(),
        });
    }
    let seen: Seen = (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    static CHECKED: LazyLock<Mutex<HashSet<Seen>>> = LazyLock::new(Mutex::default);
    if CHECKED.lock().expect("not poisoned").contains(&seen) {
        return Ok(());
    }
    let sampled = match print.method {
        Method::SampleV1 => Some(sample(&file, meta.len()).map_err(unreadable)?),
        Method::Unknown => {
            tracing::warn!(file = %path.display(), "fingerprinted by a method this build does not know; only its size is checked");
            None
        }
    };
    if sampled.is_some_and(|sampled| sampled != print.sample_sha256) {
        return Err(Damage::Content {
            file: name.to_string(),
        });
    }
    CHECKED.lock().expect("not poisoned").insert(seen);
    Ok(())
}

/// Writes `bytes` to `path` by renaming a whole new file over it, so that
/// a reader sees the old content or the new, never a part.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(name);
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// SHA-256 of `file`'s sampled pieces, in hex.
fn sample(file: &File, size: u64) -> io::Result<String> {
    let mut hash = Sha256::new();
    let mut buffer = vec![0; PIECE as usize];
    for offset in offsets(size) {
        let len = PIECE.min(size - offset) as usize;
        file.read_exact_at(&mut buffer[..len], offset)?;
        hash.update(&buffer[..len]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Where the sampled pieces start: every piece of a small file; for a
/// larger one, the first piece, the last and evenly spaced ones between.
fn offsets(size: u64) -> Vec<u64> {
    if size <= WHOLE {
        return (0..size.div_ceil(PIECE)).map(|i| i * PIECE).collect();
    }
    let last = size - PIECE;
    (0..PIECES).map(|i| last * i / (PIECES - 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn pieces_cover_small_files_and_both_ends_of_large_ones() {
        assert!(offsets(0).is_empty());
        assert_eq!(offsets(1), [0]);
        assert_eq!(offsets(PIECE + 1), [0, PIECE]);
        assert_eq!(offsets(WHOLE).len() as u64, WHOLE / PIECE);
        let large = offsets(1 << 30);
        assert_eq!(large.len(), PIECES as usize);
        assert_eq!(large[0], 0);
        assert_eq!(*large.last().unwrap(), (1 << 30) - PIECE);
        assert!(large.windows(2).all(|w| w[1] > w[0] + PIECE));
    }

    #[test]
    fn a_file_as_made_passes_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let large: Vec<u8> = (0..WHOLE * 3).map(|i| (i % 251) as u8).collect();
        write(dir.path(), "small", b"state");
        write(dir.path(), "large", &large);
        let prints = take(dir.path(), &["small", "large"]).unwrap();
        check(dir.path(), &prints).unwrap();

        // Same size, other content: a small file is hashed whole.
        write(dir.path(), "small", b"STATE");
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Content { file }) if file == "small"
        ));
        write(dir.path(), "small", b"state");
        check(dir.path(), &prints).unwrap();

        // Truncated.
        write(dir.path(), "large", &large[..large.len() - 1]);
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Size { file, .. }) if file == "large"
        ));
        // Its last byte changed, after it was checked once as it was.
        write(dir.path(), "large", &large);
        check(dir.path(), &prints).unwrap();
        let mut changed = large.clone();
        *changed.last_mut().unwrap() ^= 1;
        write(dir.path(), "large", &changed);
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Content { file }) if file == "large"
        ));

        write(dir.path(), "large", &large);
        std::fs::remove_file(dir.path().join("small")).unwrap();
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Unreadable { file, .. }) if file == "small"
        ));
    }

    #[test]
    fn a_fingerprint_is_checked_by_the_method_that_took_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "state", b"state");
        // A record from before methods were named samples as this build.
        let old: Fingerprints =
            serde_json::from_str(r#"{"state": {"size": 5, "sample_sha256": "x"}}"#).unwrap();
        assert_eq!(old["state"].method, Method::SampleV1);
        let prints = take(dir.path(), &["state"]).unwrap();
        assert_eq!(prints["state"].method, METHOD);
        let json = serde_json::to_value(&prints).unwrap();
        assert_eq!(json["state"]["method"], "sample-v1");
        // A later build's method: this one cannot sample so, and does not
        // call the file damaged for it; its size still counts.
        let mut later: Fingerprints = serde_json::from_str(
            r#"{"state": {"method": "sample-v9", "size": 5, "sample_sha256": "y"}}"#,
        )
        .unwrap();
        assert_eq!(later["state"].method, Method::Unknown);
        check(dir.path(), &later).unwrap();
        later.get_mut("state").unwrap().size = 6;
        assert!(matches!(
            check(dir.path(), &later),
            Err(Damage::Size { .. })
        ));
        write(dir.path(), "state", b"STATE");
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Content { .. })
        ));
        std::fs::remove_file(dir.path().join("state")).unwrap();
        assert!(matches!(
            check(dir.path(), &prints),
            Err(Damage::Unreadable { file, .. }) if file == "state"
        ));
    }
}
