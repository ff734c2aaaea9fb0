//! The compile cache: what a compile stage made (the language's artifacts,
//! with the stage's output and report), kept under the state directory so
//! that the same compile again (a resubmission, a rejudge, the same program
//! run once more) is skipped.
//!
//! An entry's [`Key`] is a SHA-256 of everything that decides what the
//! compile makes: the language, its root filesystem image (by id), the
//! compile command, the environment, the request's files (names, modes,
//! contents) and what is collected, and whose it is: an entry is its
//! owner's alone unless the operator sets `compile_cache.shared` (a hit
//! would tell one owner that another compiled the same source). A hit whose
//! compile took more time or memory than the request's compile limits
//! allow is not used: under those limits the compile would have failed.
//! Only compiles that exited 0 are kept.
//!
//! An entry is a directory named by its key holding `entry.json` (the
//! report, each file's name, mode, size and SHA-256), the stage's `stdout`
//! and `stderr`, and the files. It is written under a temporary name and
//! renamed into place, so that a reader finds a whole entry or none: two
//! compiles of one program at once both write, and the second rename finds
//! the first's entry and leaves it. Every file is checked against its
//! digest when it is read; a damaged entry is removed and the program
//! compiled again, never a wrong binary run. The cache holds at most
//! `compile_cache.max_mib`: after each write, the least recently used
//! entries (by the modification time of `entry.json`, touched on every
//! hit) are removed until it fits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use runner_protocol::{File, Limits, StageReport};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's format; a different one is a miss.
const FORMAT: u32 = 1;
const RECORD: &str = "entry.json";

/// `compile_cache.*` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileCacheConfig {
    /// Keep what compiles made and skip the same compile again.
    pub enabled: bool,
    /// The most the cache holds on disk; least recently used entries go.
    pub max_mib: u64,
    /// One owner's compile may serve another's request for the same
    /// program. Off by default: a hit would tell one owner that another
    /// compiled the same source.
    pub shared: bool,
}

impl Default for CompileCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_mib: 1024,
            shared: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the compile cache's entry {entry} is damaged: {why}")]
    Damaged { entry: String, why: String },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { what, path, source }
}

/// What decides a compile's result, hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything a key is made of, serialized in this order.
#[derive(Serialize)]
struct KeyParts<'a> {
    format: u32,
    /// Empty when entries are shared.
    owner: &'a str,
    language: &'a str,
    image: &'a str,
    compile: &'a [String],
    env: &'a std::collections::BTreeMap<String, String>,
    /// Name, executable, SHA-256 of the content; in the request's order.
    files: Vec<(&'a str, bool, String)>,
    collect: &'a [String],
}

/// A compile's result, as kept and as given back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub report: StageReport,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// What the compile made: the language's artifacts.
    pub files: Vec<File>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    report: StageReport,
    stdout: Digest256,
    stderr: Digest256,
    files: Vec<FileRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    name: String,
    executable: bool,
    digest: Digest256,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Digest256 {
    size: u64,
    sha256: String,
}

impl Digest256 {
    fn of(bytes: &[u8]) -> Self {
        Self {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    shared: bool,
}

impl CompileCache {
    /// The cache in `dir` as `config` says, or none when it is off.
    pub fn new(dir: PathBuf, config: &CompileCacheConfig) -> Option<Self> {
        config.enabled.then_some(Self {
            dir,
            max_bytes: config.max_mib << 20,
            shared: config.shared,
        })
    }

    /// The key of compiling `files` with `compile` in `language`'s image
    /// `image`, for `owner`.
    #[allow(clippy::too_many_arguments)]
    pub fn key(
        &self,
        owner: &str,
        language: &str,
        image: &str,
        compile: &[String],
        env: &std::collections::BTreeMap<String, String>,
        files: &[File],
        collect: &[String],
    ) -> Key {
        let parts = KeyParts {
            format: FORMAT,
            owner: if self.shared { "" } else { owner },
            language,
            image,
            compile,
            env,
            files: files
                .iter()
                .map(|f| {
                    let digest = hex::encode(Sha256::digest(&f.content));
                    (f.name.as_str(), f.executable, digest)
                })
                .collect(),
            collect,
        };
        let json = serde_json::to_vec(&parts).expect("a key's parts serialize");
        Key(hex::encode(Sha256::digest(&json)))
    }

    /// The entry of `key`, if there is a whole one whose compile stayed
    /// within `limits`. A damaged entry is removed (and logged): the
    /// program is compiled again. Blocks on the disk.
    pub fn get(&self, key: &Key, limits: &Limits) -> Option<Entry> {
        let dir = self.dir.join(key.as_str());
        if !dir.exists() {
            return None;
        }
        match read(&dir) {
            Ok(entry) => {
                // Most recently used: its record's time.
                let record = dir.join(RECORD);
                let _ = fs::File::options()
                    .append(true)
                    .open(&record)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                within(&entry.report, limits).then_some(entry)
            }
            Err(error) => {
                tracing::warn!(
                    error = %crate::error_chain(&error),
                    "removing a damaged compile cache entry; compiling again"
                );
                let _ = fs::remove_dir_all(&dir);
                None
            }
        }
    }

    /// Keeps `entry` under `key`, then evicts down to the size bound.
    /// Blocks on the disk.
    pub fn put(&self, key: &Key, entry: &Entry) -> Result<(), CacheError> {
        let dir = self.dir.join(key.as_str());
        if dir.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_error("create", &self.dir))?;
        let scratch = self
            .dir
            .join(format!(".writing-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&scratch).map_err(io_error("create", &scratch))?;
        let written = write_entry(&scratch, entry).and_then(|()| {
            fs::rename(&scratch, &dir).or_else(|e| {
                // Another compile of the same program put it first.
                if dir.join(RECORD).exists() {
                    Ok(())
                } else {
                    Err(io_error("move into place", &dir)(e))
                }
            })
        });
        if scratch.exists() {
            let _ = fs::remove_dir_all(&scratch);
        }
        written?;
        self.evict();
        Ok(())
    }

    /// Removes least recently used entries until the cache fits, and
    /// scratch directories of writers that are gone.
    fn evict(&self) {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries = Vec::new();
        let mut total = 0;
        for entry in read.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".writing-") {
                // A writer takes well under this; one older is dead.
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
                if old {
                    let _ = fs::remove_dir_all(&path);
                }
                continue;
            }
            let used = fs::metadata(path.join(RECORD))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let size = dir_bytes(&path);
            total += size;
            entries.push((used, size, path));
        }
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_dir_all(&path).is_ok() {
                total -= size;
            }
        }
    }
}

/// Writes `entry`'s files and record into `dir`.
fn write_entry(dir: &Path, entry: &Entry) -> Result<(), CacheError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(io_error("write", &path))
    };
    write("stdout", &entry.stdout)?;
    write("stderr", &entry.stderr)?;
    let mut files = Vec::with_capacity(entry.files.len());
    for (i, file) in entry.files.iter().enumerate() {
        write(&i.to_string(), &file.content)?;
        files.push(FileRecord {
            name: file.name.clone(),
            executable: file.executable,
            digest: Digest256::of(&file.content),
        });
    }
    let record = Record {
        format: FORMAT,
        report: entry.report.clone(),
        stdout: Digest256::of(&entry.stdout),
        stderr: Digest256::of(&entry.stderr),
        files,
    };
    write(
        RECORD,
        &serde_json::to_vec(&record).expect("a record serializes"),
    )
}

/// Whether a compile that went as `report` says fits `limits`.
fn within(report: &StageReport, limits: &Limits) -> bool {
    report.exit_code == Some(0)
        && report.cpu_time_us <= limits.cpu_time_ms * 1000
        && report.wall_time_us <= limits.wall_time_ms * 1000
        && report.memory_peak_bytes <= limits.memory_bytes
}

fn read(dir: &Path) -> Result<Entry, CacheError> {
    let damaged = |why: String| CacheError::Damaged {
        entry: dir.display().to_string(),
        why,
    };
    let record_path = dir.join(RECORD);
    let bytes = fs::read(&record_path).map_err(io_error("read", &record_path))?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if record.format != FORMAT {
        return Err(damaged(format!("format {}", record.format)));
    }
    let checked = |name: &str, digest: &Digest256| -> Result<Vec<u8>, CacheError> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        if Digest256::of(&bytes) != *digest {
            return Err(damaged(format!("{name} is not what was written")));
        }
        Ok(bytes)
    };
    let stdout = checked("stdout", &record.stdout)?;
    let stderr = checked("stderr", &record.stderr)?;
    let mut files = Vec::with_capacity(record.files.len());
    for (i, file) in record.files.into_iter().enumerate() {
        files.push(File {
            content: checked(&i.to_string(), &file.digest)?,
            name: file.name,
            executable: file.executable,
        });
    }
    Ok(Entry {
        report: record.report,
        stdout,
        stderr,
        files,
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_protocol::Stage;
    use std::collections::BTreeMap;

    fn cache(dir: &Path, max_mib: u64, shared: bool) -> CompileCache {
        let config = CompileCacheConfig {
            enabled: true,
            max_mib,
            shared,
        };
        CompileCache::new(dir.to_path_buf(), &config).unwrap()
    }

    fn file(name: &str, content: &[u8]) -> File {
        File {
            name: name.into(),
            content: content.to_vec(),
            executable: false,
        }
    }

    fn key(cache: &CompileCache, owner: &str, source: &[u8]) -> Key {
        let compile = ["g++".to_string(), "main.cpp".to_string()];
        let files = [file("main.cpp", source)];
        cache.key(
            owner,
            "cpp",
            "rootfs-cpp-1",
            &compile,
            &BTreeMap::new(),
            &files,
            &["main".into()],
        )
    }

    fn entry(binary: &[u8]) -> Entry {
        Entry {
            report: StageReport {
                exit_code: Some(0),
                wall_time_us: 2_000_000,
                cpu_time_us: 1_500_000,
                memory_peak_bytes: 100 << 20,
                ..StageReport::new(Stage::Compile)
            },
            stdout: Vec::new(),
            stderr: b"main.cpp:1: warning: unused".to_vec(),
            files: vec![File {
                executable: true,
                ..file("main", binary)
            }],
        }
    }

    fn limits() -> Limits {
        Limits {
            wall_time_ms: 10_000,
            cpu_time_ms: 10_000,
            memory_bytes: 512 << 20,
            processes: 64,
            output_bytes: 1 << 20,
            file_size_bytes: 64 << 20,
        }
    }

    #[test]
    fn an_entry_comes_back_whole_for_its_owner_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 16, false);
        let alice = key(&cache, "alice", b"int main() {}");
        assert_eq!(cache.get(&alice, &limits()), None);
        cache.put(&alice, &entry(b"\x7fELF...")).unwrap();
        assert_eq!(cache.get(&alice, &limits()), Some(entry(b"\x7fELF...")));
        // Another owner, another program, another image: other keys.
        assert_ne!(key(&cache, "bob", b"int main() {}"), alice);
        assert_ne!(key(&cache, "alice", b"int main() { }"), alice);
        let other_image = cache.key(
            "alice",
            "cpp",
            "rootfs-cpp-2",
            &["g++".into(), "main.cpp".into()],
            &BTreeMap::new(),
            &[file("main.cpp", b"int main() {}")],
            &["main".into()],
        );
        assert_ne!(other_image, alice);
        // Shared by the operator's choice: one key for everyone.
        let shared = self::cache(dir.path(), 16, true);
        assert_eq!(
            key(&shared, "alice", b"x"),
            key(&shared, "bob", b"x"),
            "shared entries are everyone's"
        );
    }

    #[test]
    fn a_hit_past_the_requests_compile_limits_is_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 16, false);
        let key = key(&cache, "alice", b"int main() {}");
        cache.put(&key, &entry(b"binary")).unwrap();
        let tight = Limits {
            cpu_time_ms: 1_000,
            ..limits()
        };
        assert_eq!(cache.get(&key, &tight), None);
        let small = Limits {
            memory_bytes: 64 << 20,
            ..limits()
        };
        assert_eq!(cache.get(&key, &small), None);
        assert!(cache.get(&key, &limits()).is_some(), "the entry stays");
    }

    #[test]
    fn a_damaged_entry_is_removed_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 16, false);
        for damage in ["flip", "truncate", "record", "missing"] {
            let key = key(&cache, damage, b"int main() {}");
            cache.put(&key, &entry(b"the right binary")).unwrap();
            let entry_dir = dir.path().join(key.as_str());
            match damage {
                "flip" => fs::write(entry_dir.join("0"), b"the wrong binary").unwrap(),
                "truncate" => fs::write(entry_dir.join("0"), b"the").unwrap(),
                "record" => fs::write(entry_dir.join(RECORD), b"{").unwrap(),
                _ => fs::remove_file(entry_dir.join("stderr")).unwrap(),
            }
            assert_eq!(cache.get(&key, &limits()), None, "{damage}");
            assert!(!entry_dir.exists(), "{damage}: removed");
            cache.put(&key, &entry(b"the right binary")).unwrap();
            assert!(cache.get(&key, &limits()).is_some(), "{damage}: made again");
        }
    }

    #[test]
    fn the_least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB: room for two entries of 400 KiB, not three.
        let cache = cache(dir.path(), 1, false);
        let big = |n: u8| entry(&vec![n; 400 << 10]);
        let keys: Vec<Key> = (0..3u8).map(|n| key(&cache, "alice", &[n])).collect();
        cache.put(&keys[0], &big(0)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&keys[1], &big(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The first is used again: the second is now the least recent.
        assert!(cache.get(&keys[0], &limits()).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&keys[2], &big(2)).unwrap();
        assert!(cache.get(&keys[0], &limits()).is_some());
        assert_eq!(cache.get(&keys[1], &limits()), None);
        assert!(cache.get(&keys[2], &limits()).is_some());
    }

    #[test]
    fn two_writers_of_one_entry_leave_one_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(cache(dir.path(), 64, false));
        let key = key(&cache, "alice", b"int main() {}");
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, key) = (cache.clone(), key.clone());
                std::thread::spawn(move || cache.put(&key, &entry(&vec![7; 1 << 20])))
            })
            .collect();
        for writer in writers {
            writer.join().unwrap().unwrap();
        }
        assert_eq!(cache.get(&key, &limits()), Some(entry(&vec![7; 1 << 20])));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [key.as_str()], "no scratch left behind");
    }

    #[test]
    fn an_unwritable_cache_is_an_error_not_a_panic() {
        let cache = CompileCache::new(
            PathBuf::from("/proc/no-cache-here"),
            &CompileCacheConfig::default(),
        )
        .unwrap();
        let key = key(&cache, "alice", b"x");
        assert!(cache.put(&key, &entry(b"binary")).is_err());
        assert_eq!(cache.get(&key, &limits()), None);
    }
}
