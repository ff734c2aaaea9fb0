//! The snapshot store: VMs booted until their agent was ready, the
//! language's runtime warmed, then saved, so that later VMs start from
//! there in a fraction of a second instead of booting.
//!
//! A snapshot is two files: the guest's memory (the template VM ran with
//! its memory in this file) and the device state the VMM saved, without
//! the memory. A restored VM maps the memory file copy-on-write, so any
//! number restore from one snapshot at once and none can change it.
//!
//! Making one is work done ahead of requests (the engine's `prepare`
//! room): boot a template VM with its memory in the snapshot's file, warm
//! it, prestart its runtime, save it into the store.
//!
//! Like images, snapshots are content-addressed: the id hashes everything
//! the saved state depends on (kernel, initramfs with its agent, root
//! filesystem, VMM and its version, acceleration, CPU model, memory size,
//! warm-up). A change to any of them is a different id, so a snapshot is
//! never restored onto a mismatch; the new one is built instead.
//!
//! A snapshot is made in a scratch directory and renamed into place, so a
//! runner killed while making one leaves only the scratch directory, which
//! nothing restores and the next make replaces. Its two files are
//! fingerprinted when it is made and checked before a VM is restored from
//! them ([`crate::integrity`]): a damaged snapshot is not found, so the VM
//! boots instead and the snapshot is made again.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::Flock;
use runner_protocol::PrestartSpec;
use serde::{Deserialize, Serialize};

use crate::image::{GuestImages, ImageError, Scratch, image_id, lock_build};
use crate::integrity::{self, Fingerprints};
use crate::lang::Language;
use crate::vmm::{Backend, vm_memory_mib};

/// Bump when what a snapshot holds changes in a way the key does not show.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
pub const MEMORY_FILE: &str = "memory";
pub const STATE_FILE: &str = "state";

/// Everything a snapshot depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotKey {
    pub format: u32,
    pub language: String,
    pub kernel: String,
    /// Arguments of the kernel's flavour (see [`crate::image::KernelSpec`]),
    /// then those the backend adds ([`Backend::boot_args`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    pub initramfs: String,
    pub rootfs: String,
    /// The backend's name and version, as it reports them.
    pub backend: String,
    pub accel: String,
    /// The machine type, q35 or microvm.
    pub machine: String,
    pub cpu: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The warm-up program, if any.
    pub warm: Option<String>,
    /// The prestarted runtime's command, if any.
    #[serde(default)]
    pub prestart: Option<Vec<String>>,
}

impl SnapshotKey {
    /// What `language`'s snapshot depends on, made from these images on
    /// this backend, holding `prestart` if given.
    pub fn of(
        language: &Language,
        images: &GuestImages,
        backend: &dyn Backend,
        prestart: Option<PrestartSpec>,
    ) -> Self {
        let id = |path: &Path| {
            path.parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let info = backend.info();
        Self {
            format: FORMAT,
            language: language.name.clone(),
            kernel: images.kernel.id.clone(),
            kernel_args: (images.kernel.args.iter().cloned())
                .chain(backend.boot_args())
                .collect(),
            initramfs: id(&images.initramfs),
            rootfs: id(&images.rootfs),
            backend: format!("{} {}", info.name, info.version),
            accel: info.accel.to_string(),
            machine: info.machine.to_string(),
            // A CPU model of the host's own (KVM) is whatever this
            // machine's CPU is.
            cpu: match backend.cpu_model() {
                "host" => format!("host: {}", crate::machine::host_cpu_signature()),
                model => model.to_string(),
            },
            memory_mib: vm_memory_mib(language.memory_mib.into()),
            vcpus: 1,
            warm: language.warm.clone(),
            prestart: prestart.map(|spec| spec.argv),
        }
    }

    pub fn id(&self) -> String {
        image_id("snapshot", Some(&self.language), self).0
    }
}

/// What `runner snapshot list` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub id: String,
    pub key: SnapshotKey,
    pub created_at: u64,
    /// Booting, warming and saving the template VM.
    pub create_seconds: f64,
    /// Bytes of the memory file on disk (it is sparse).
    pub memory_allocated_bytes: u64,
    pub state_bytes: u64,
    /// Fingerprints of the memory and state files, checked before a VM is
    /// restored from them. Snapshots made before fingerprints were recorded
    /// get theirs the first time they are found.
    #[serde(default, skip_serializing_if = "Fingerprints::is_empty")]
    pub files: Fingerprints,
}

/// A snapshot ready to restore.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
}

impl Snapshot {
    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn memory_mib(&self) -> u32 {
        self.manifest.key.memory_mib
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A snapshot being made: the files the template VM writes, and the lock
/// that keeps other runners from making the same one.
pub struct Pending {
    scratch: Scratch,
    dest: PathBuf,
    key: SnapshotKey,
    id: String,
    started: std::time::Instant,
    _lock: Flock<File>,
}

impl Pending {
    /// Where the snapshot's files are written until it is finished.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    pub fn memory(&self) -> PathBuf {
        self.scratch.path().join(MEMORY_FILE)
    }

    pub fn state(&self) -> PathBuf {
        self.scratch.path().join(STATE_FILE)
    }

    /// Records the snapshot and moves it into place.
    pub fn finish(self) -> Result<Snapshot, ImageError> {
        let allocated = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
        };
        let manifest = SnapshotManifest {
            id: self.id.clone(),
            key: self.key.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            create_seconds: self.started.elapsed().as_secs_f64(),
            memory_allocated_bytes: allocated(&self.memory()),
            state_bytes: fs::metadata(self.state()).map_or(0, |m| m.len()),
            files: integrity::take(self.scratch.path(), &[MEMORY_FILE, STATE_FILE])
                .map_err(ImageError::io("read", self.scratch.path()))?,
        };
        // Guest memory is nobody else's business.
        let memory = self.memory();
        fs::set_permissions(&memory, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(ImageError::io("chmod", &memory))?;
        let path = self.scratch.path().join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        fs::write(&path, text).map_err(ImageError::io("write", &path))?;
        // A directory under this id that `find` did not accept (made from
        // something else, or damaged) is replaced. VMs restored from it keep
        // their open files.
        if self.dest.exists() {
            fs::remove_dir_all(&self.dest).map_err(ImageError::io("remove", &self.dest))?;
        }
        self.scratch.persist(&self.dest)?;
        tracing::info!(snapshot = %self.id, seconds = manifest.create_seconds, "snapshot created");
        Ok(Snapshot {
            dir: self.dest,
            manifest,
        })
    }
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The snapshot with exactly this key, if it has been made and its
    /// files are as they were made.
    pub fn find(&self, key: &SnapshotKey) -> Option<Snapshot> {
        let dir = self.dir.join(key.id());
        let mut manifest = read_manifest(&dir).ok()?;
        // The id is a hash of the key; a manifest with another key means a
        // collision or a hand-made directory: do not trust it.
        if manifest.key != *key {
            return None;
        }
        if manifest.files.is_empty() {
            manifest.files = integrity::take(&dir, &[MEMORY_FILE, STATE_FILE]).ok()?;
            let path = dir.join(MANIFEST);
            let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
            if let Err(e) = integrity::replace_file(&path, &text) {
                tracing::debug!(path = %path.display(), error = %e, "fingerprints not recorded");
            }
        } else if let Err(damage) = integrity::check(&dir, &manifest.files) {
            tracing::warn!(snapshot = %manifest.id, %damage, "snapshot damaged; not restoring it");
            return None;
        }
        Some(Snapshot { dir, manifest })
    }

    /// Locks `key`'s snapshot for making. `Ok(Err(snapshot))` when it exists
    /// (perhaps made by another runner while this one waited).
    pub fn begin(&self, key: &SnapshotKey) -> Result<Result<Pending, Snapshot>, ImageError> {
        if let Some(snapshot) = self.find(key) {
            return Ok(Err(snapshot));
        }
        let id = key.id();
        let lock = lock_build(&self.dir, &id)?;
        if let Some(snapshot) = self.find(key) {
            return Ok(Err(snapshot));
        }
        Ok(Ok(Pending {
            scratch: Scratch::new(self.dir.join(format!(".build-{id}")))?,
            dest: self.dir.join(&id),
            key: key.clone(),
            id,
            started: std::time::Instant::now(),
            _lock: lock,
        }))
    }

    /// Every snapshot made, oldest first.
    pub fn list(&self) -> Vec<SnapshotManifest> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut list: Vec<SnapshotManifest> = entries
            .flatten()
            .filter_map(|e| {
                let manifest = read_manifest(&e.path()).ok()?;
                (e.file_name().to_str() == Some(manifest.id.as_str())).then_some(manifest)
            })
            .collect();
        list.sort_by_key(|m| m.created_at);
        list
    }

    /// Removes the snapshots whose ids are not in `keep` and that hold
    /// none of `in_use` (what paused sessions need, see
    /// the session registry's `files_of_paused`). Returns their ids.
    pub fn prune(&self, keep: &[String], in_use: &[PathBuf]) -> Result<Vec<String>, ImageError> {
        let mut keep = keep.to_vec();
        keep.extend(crate::state::entries_holding(&self.dir, in_use));
        let mut removed = Vec::new();
        for manifest in self.list() {
            if keep.contains(&manifest.id) {
                continue;
            }
            let path = self.dir.join(&manifest.id);
            fs::remove_dir_all(&path).map_err(ImageError::io("remove", &path))?;
            removed.push(manifest.id);
        }
        Ok(removed)
    }
}

fn read_manifest(dir: &Path) -> Result<SnapshotManifest, ImageError> {
    let path = dir.join(MANIFEST);
    let text = fs::read(&path).map_err(ImageError::io("read", &path))?;
    serde_json::from_slice(&text)
        .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rootfs: &str) -> SnapshotKey {
        SnapshotKey {
            format: FORMAT,
            language: "python".into(),
            kernel: "kernel-1".into(),
            initramfs: "initramfs-1".into(),
            rootfs: rootfs.into(),
            backend: "qemu 10.0.2".into(),
            accel: "tcg".into(),
            kernel_args: Vec::new(),
            machine: "q35".into(),
            cpu: "max".into(),
            memory_mib: 576,
            vcpus: 1,
            warm: None,
            prestart: None,
        }
    }

    #[test]
    fn ids_change_with_anything_the_snapshot_depends_on() {
        assert_eq!(key("rootfs-a").id(), key("rootfs-a").id());
        assert_ne!(key("rootfs-a").id(), key("rootfs-b").id());
        let mut other = key("rootfs-a");
        other.accel = "kvm".into();
        assert_ne!(key("rootfs-a").id(), other.id());
        let mut prestarted = key("rootfs-a");
        prestarted.prestart = Some(vec!["python3".into()]);
        assert_ne!(key("rootfs-a").id(), prestarted.id());
        assert!(key("rootfs-a").id().starts_with("snapshot-python-"));
        let mut told = key("rootfs-a");
        told.kernel_args = vec!["tsc_early_khz".into()];
        assert_ne!(key("rootfs-a").id(), told.id());
    }

    #[test]
    fn a_snapshot_is_found_only_under_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let Ok(pending) = store.begin(&key("rootfs-a")).unwrap() else {
            panic!("nothing made yet")
        };
        fs::write(pending.memory(), b"m").unwrap();
        fs::write(pending.state(), b"s").unwrap();
        pending.finish().unwrap();
        assert!(store.find(&key("rootfs-a")).is_some());
        assert!(store.find(&key("rootfs-b")).is_none());
        assert!(store.begin(&key("rootfs-a")).unwrap().is_err());
        // A manifest copied under another key's id is not trusted.
        let b = dir.path().join(key("rootfs-b").id());
        fs::create_dir_all(&b).unwrap();
        fs::copy(
            dir.path().join(key("rootfs-a").id()).join(MANIFEST),
            b.join(MANIFEST),
        )
        .unwrap();
        assert!(store.find(&key("rootfs-b")).is_none());
        assert_eq!(store.list().len(), 1);
        let memory = dir.path().join(key("rootfs-a").id()).join(MEMORY_FILE);
        assert!(store.prune(&[], &[memory]).unwrap().is_empty());
        assert_eq!(store.prune(&[], &[]).unwrap(), [key("rootfs-a").id()]);
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_damaged_snapshot_is_not_found_and_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let make = |memory: &[u8]| {
            let Ok(pending) = store.begin(&key("rootfs-a")).unwrap() else {
                panic!("not made, or damaged")
            };
            fs::write(pending.memory(), memory).unwrap();
            fs::write(pending.state(), b"state").unwrap();
            pending.finish().unwrap()
        };
        let made = make(b"memory");
        assert_eq!(made.manifest.files.len(), 2);
        fs::write(made.state(), b"STATE").unwrap();
        assert!(store.find(&key("rootfs-a")).is_none());
        let again = make(b"memory");
        assert!(store.find(&key("rootfs-a")).is_some());
        fs::write(again.memory(), b"memory, longer").unwrap();
        assert!(store.find(&key("rootfs-a")).is_none());

        // A snapshot recorded before fingerprints gets them when found.
        make(b"memory");
        let manifest = dir.path().join(key("rootfs-a").id()).join(MANIFEST);
        let mut record: serde_json::Value =
            serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
        record.as_object_mut().unwrap().remove("files");
        fs::write(&manifest, record.to_string()).unwrap();
        assert!(store.find(&key("rootfs-a")).is_some());
        assert_eq!(
            read_manifest(manifest.parent().unwrap())
                .unwrap()
                .files
                .len(),
            2
        );
    }
}
