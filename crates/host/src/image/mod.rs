//! Guest images: kernel, initramfs and one root filesystem per language,
//! built from Debian packages and cached, content-addressed, under the state
//! directory.
//!
//! Every image has a *recipe* (what it is made of); its id is a hash of the
//! recipe, so an image is rebuilt exactly when its recipe changes. Images are
//! built in a scratch directory and renamed into place, under a lock, so that
//! concurrent runners never see or build a half-made image, and a runner
//! killed while building leaves only a scratch directory that the next build
//! replaces. An image's files are fingerprinted when it is made and checked
//! before a VM boots from them ([`crate::integrity`]): a damaged image is
//! built again, never booted.

mod cpio;
mod initramfs;
mod kernel;
mod rootfs;
mod source;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::integrity::{self, Damage, Fingerprints};
use crate::lang::Language;

pub use kernel::{KernelChoice, KernelImage, KernelSpec};
pub use source::DebianSource;

/// Bump when the way images are built changes in a way recipes do not show.
const BUILDER_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{tool} not found: install the Debian package {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "the guest kernel is built from Debian's {package}, which is not installed: \
         install the Debian packages {packages} (scripts/setup.sh does), \
         or set kernel = \"debian\" to boot Debian's own kernel"
    )]
    MissingKernelSource {
        package: &'static str,
        packages: &'static str,
    },
    #[error(
        "not enough disk space in {path}: {free_mib} MiB free, building needs {need_mib} MiB; \
         free some space or point RUNNER_HOME at a bigger disk"
    )]
    NoSpace {
        path: PathBuf,
        free_mib: u64,
        need_mib: u64,
    },
    #[error(
        "building guest images needs root (mmdebstrap, chroot, file ownership in the image): \
         run `sudo RUNNER_HOME={state} runner image build` once; running code does not need root"
    )]
    NeedsRoot { state: String },
    #[error("{command} failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error(
        "no Debian mirror: this machine's apt sources have no Debian entry; \
         set debian_mirror (RUNNER_DEBIAN_MIRROR) to one"
    )]
    NoMirror,
    #[error(
        "image {id} is damaged ({damage}); building it again needs root: \
         run `sudo RUNNER_HOME={state} runner image build`"
    )]
    Damaged {
        id: String,
        damage: Damage,
        state: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// What `image list` shows about a built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub kind: String,
    /// The language for root filesystems.
    pub name: Option<String>,
    pub recipe: serde_json::Value,
    /// Kernel release or language version, as found in the image.
    pub version: String,
    pub size_bytes: u64,
    pub built_at: u64,
    pub build_seconds: f64,
    /// Fingerprints of the image's files, checked before a VM boots from
    /// them. Images made before fingerprints were recorded get theirs the
    /// first time they are used.
    #[serde(default, skip_serializing_if = "Fingerprints::is_empty")]
    pub files: Fingerprints,
}

/// The guest agent an initramfs is built around, with its SHA-256, which
/// names the initramfs. Hashing 1.4 MB on every execution's image check
/// would be work repeated on the hot path, so the digest is taken once.
#[derive(Debug)]
pub struct Agent {
    bytes: &'static [u8],
    sha256: String,
}

impl Agent {
    pub fn new(bytes: &'static [u8]) -> Self {
        Self {
            bytes,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// The three files a VM boots from.
#[derive(Debug, Clone)]
pub struct GuestImages {
    pub kernel: KernelImage,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub rootfs_manifest: Manifest,
}

/// Reports what a build is doing, for a progress display.
pub trait Progress: Sync {
    fn step(&self, message: &str);
}

impl Progress for () {
    fn step(&self, _: &str) {}
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    source: DebianSource,
    kernel: KernelSpec,
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>, source: DebianSource, kernel: KernelSpec) -> Self {
        Self {
            dir: dir.into(),
            source,
            kernel,
        }
    }

    /// The kernel guests boot.
    pub fn kernel_spec(&self) -> KernelSpec {
        self.kernel
    }

    /// The same store with guests booting `kernel` instead.
    pub fn with_kernel(&self, kernel: KernelSpec) -> Self {
        Self {
            kernel,
            ..self.clone()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kernel, initramfs and the language's root filesystem, building
    /// whatever is missing.
    pub fn ensure(
        &self,
        language: &Language,
        agent: &Agent,
        progress: &dyn Progress,
    ) -> Result<GuestImages, ImageError> {
        let kernel = self.kernel(progress)?;
        let initramfs = self.initramfs(&kernel, agent, progress)?;
        let (rootfs, rootfs_manifest) = self.rootfs(language, progress)?;
        Ok(GuestImages {
            kernel,
            initramfs,
            rootfs,
            rootfs_manifest,
        })
    }

    pub fn kernel(&self, progress: &dyn Progress) -> Result<KernelImage, ImageError> {
        let (name, recipe) = self.kernel_recipe()?;
        let dir = self.build("kernel", name, &recipe, progress, |scratch| {
            self.kernel.build(&self.source, scratch, progress)
        })?;
        KernelImage::open(&dir, &self.kernel, &read_manifest(&dir)?)
    }

    /// The kernel image's id, if its recipe can be known here.
    fn kernel_id(&self) -> Result<String, ImageError> {
        let (name, recipe) = self.kernel_recipe()?;
        Ok(image_id("kernel", name, &recipe).0)
    }

    /// The kernel's name and recipe. Where the recipe cannot be known here
    /// (the kernel source or the compiler is not installed) but a kernel
    /// with the same options was built, the newest such: running code
    /// needs no compiler, only building does.
    fn kernel_recipe(&self) -> Result<(Option<&'static str>, serde_json::Value), ImageError> {
        let error = match self.kernel.recipe(&self.source) {
            Ok(known) => return Ok(known),
            Err(e) => e,
        };
        let name = self.kernel.name();
        let built = self.list().unwrap_or_default().into_iter().rev().find(|m| {
            let recipe = &m.recipe["recipe"];
            m.kind == "kernel"
                && m.name.as_deref() == name
                && self.kernel.same_options(recipe)
                && image_id("kernel", name, recipe).0 == m.id
        });
        match built {
            Some(manifest) => Ok((name, manifest.recipe["recipe"].clone())),
            None => Err(error),
        }
    }

    pub fn initramfs(
        &self,
        kernel: &KernelImage,
        agent: &Agent,
        progress: &dyn Progress,
    ) -> Result<PathBuf, ImageError> {
        let recipe = initramfs::recipe(&kernel.id, agent);
        let dir = self.build("initramfs", None, &recipe, progress, |scratch| {
            initramfs::build(kernel, agent, scratch)
        })?;
        Ok(dir.join(initramfs::FILE))
    }

    pub fn rootfs(
        &self,
        language: &Language,
        progress: &dyn Progress,
    ) -> Result<(PathBuf, Manifest), ImageError> {
        let recipe = rootfs::recipe(&self.source, language);
        let dir = self.build(
            "rootfs",
            Some(&language.name),
            &recipe,
            progress,
            |scratch| rootfs::build(&self.source, language, scratch, progress),
        )?;
        Ok((dir.join(rootfs::FILE), read_manifest(&dir)?))
    }

    /// The images this build of Runner Codes uses for `languages`, each with
    /// whether it is built, without building anything. A kernel whose
    /// recipe cannot be known here (its source is not installed) is
    /// described instead of named, and so are the images built on it.
    pub fn status(&self, languages: &[Language], agent: &Agent) -> Vec<(String, bool)> {
        let mut ids = match self.kernel_id() {
            Ok(kernel) => {
                let (initramfs, _) =
                    image_id("initramfs", None, &initramfs::recipe(&kernel, agent));
                vec![kernel, initramfs]
            }
            Err(e) => vec![
                format!("kernel ({e})"),
                "initramfs (needs the kernel)".into(),
            ],
        };
        for language in languages {
            let recipe = rootfs::recipe(&self.source, language);
            ids.push(image_id("rootfs", Some(&language.name), &recipe).0);
        }
        ids.into_iter()
            .map(|id| {
                let built = self.dir.join(&id).join(MANIFEST).exists();
                (id, built)
            })
            .collect()
    }

    /// The manifest of the root filesystem `language` uses, if it is built.
    pub fn rootfs_manifest(&self, language: &Language) -> Option<Manifest> {
        let (id, _) = image_id(
            "rootfs",
            Some(&language.name),
            &rootfs::recipe(&self.source, language),
        );
        read_manifest(&self.dir.join(id)).ok()
    }

    /// Removes every image that this build of Runner Codes no longer uses
    /// for `languages` (older recipes, older agents, on any kernel it can
    /// select) and leftover build directories. Returns what was removed.
    /// Images are only ever replaced by new ids, so a runner still using an
    /// old one keeps its open files.
    /// Images with a file in `in_use` (what paused sessions need to
    /// resume, see the session registry's `files_of_paused`) are kept.
    pub fn prune(
        &self,
        languages: &[Language],
        agent: &Agent,
        in_use: &[PathBuf],
    ) -> Result<Vec<String>, ImageError> {
        // Without the kernel's id every kernel would look unused.
        self.kernel_id()?;
        let mut keep: Vec<String> = self
            .status(languages, agent)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // The other kernels a configuration can select (and the initramfs
        // built on each) stay too: switching to one is a setting, and
        // building it again takes minutes. One whose recipe cannot be known
        // here (its source is not installed) could not boot either.
        for spec in KernelSpec::ALL {
            let other = self.with_kernel(spec);
            if other.kernel_id().is_ok() {
                keep.extend(other.status(&[], agent).into_iter().map(|(id, _)| id));
            }
        }
        // Images a paused session needs to resume.
        keep.extend(crate::state::entries_holding(&self.dir, in_use));
        let mut removed = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(ImageError::io("read", &self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || name.ends_with(".lock") {
                continue;
            }
            let path = entry.path();
            if name.starts_with(".build-") {
                // A build in progress holds the image's lock; skip those.
                let id = name.trim_start_matches(".build-");
                let lock = File::create(self.dir.join(format!(".{id}.lock")))
                    .map_err(ImageError::io("create", &self.dir))?;
                if Flock::lock(lock, FlockArg::LockExclusiveNonblock).is_err() {
                    continue;
                }
            } else if !path.join(MANIFEST).exists() {
                continue;
            }
            fs::remove_dir_all(&path).map_err(ImageError::io("remove", &path))?;
            removed.push(name);
        }
        removed.sort();
        Ok(removed)
    }

    /// The kernel and initramfs, if both are built.
    pub fn boot_files(&self, agent: &Agent) -> Option<(PathBuf, PathBuf)> {
        let status = self.status(&[], agent);
        if status.iter().all(|(_, built)| *built) {
            let kernel = self.dir.join(&status[0].0).join(kernel::VMLINUX);
            let initramfs = self.dir.join(&status[1].0).join(initramfs::FILE);
            Some((kernel, initramfs))
        } else {
            None
        }
    }

    /// Every built image, oldest first.
    pub fn list(&self) -> Result<Vec<Manifest>, ImageError> {
        let mut list = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(ImageError::io("read", &self.dir)(e)),
        };
        for entry in entries.flatten() {
            if entry.path().join(MANIFEST).exists() {
                list.push(read_manifest(&entry.path())?);
            }
        }
        list.sort_by_key(|m| m.built_at);
        Ok(list)
    }

    /// Returns the directory of the image with this recipe, building it with
    /// `make` first if it does not exist. `make` fills a scratch directory and
    /// returns the image's version string.
    fn build<R: Serialize>(
        &self,
        kind: &str,
        name: Option<&str>,
        recipe: &R,
        progress: &dyn Progress,
        make: impl FnOnce(&Path) -> Result<String, ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let (id, recipe) = image_id(kind, name, recipe);
        let dir = self.dir.join(&id);
        if let Some(Ok(())) = intact(&dir) {
            return Ok(dir);
        }
        let _lock = lock_build(&self.dir, &id)?;
        // Another runner may have built it while we waited for the lock.
        let damage = match intact(&dir) {
            Some(Ok(())) => return Ok(dir),
            Some(Err(damage)) => {
                tracing::warn!(image = %id, %damage, "image damaged; building it again");
                Some(damage)
            }
            None => None,
        };

        if !nix::unistd::geteuid().is_root() {
            let state = self.dir.parent().unwrap_or(&self.dir);
            let state = state.display().to_string();
            return Err(match damage {
                Some(damage) => ImageError::Damaged { id, damage, state },
                None => ImageError::NeedsRoot { state },
            });
        }
        progress.step(&format!("building {id}"));
        let started = Instant::now();
        let scratch = Scratch::new(self.dir.join(format!(".build-{id}")))?;
        let version = make(scratch.path())?;
        let manifest = Manifest {
            id: id.clone(),
            kind: kind.to_string(),
            name: name.map(str::to_string),
            recipe,
            version,
            size_bytes: dir_size(scratch.path()),
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
            build_seconds: started.elapsed().as_secs_f64(),
            files: fingerprint(scratch.path()).map_err(ImageError::io("read", scratch.path()))?,
        };
        let manifest_path = scratch.path().join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        fs::write(&manifest_path, text).map_err(ImageError::io("write", &manifest_path))?;
        if dir.exists() {
            // The damaged image. VMs booted from it keep their open files.
            fs::remove_dir_all(&dir).map_err(ImageError::io("remove", &dir))?;
        }
        scratch.persist(&dir)?;
        tracing::info!(image = %id, seconds = manifest.build_seconds, "image built");
        Ok(dir)
    }
}

/// Whether the image in `dir` is whole: `None` if it was never built,
/// otherwise its files checked against their fingerprints. An image made
/// before fingerprints were recorded gets them now, if this process may
/// write its record.
fn intact(dir: &Path) -> Option<Result<(), Damage>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return None;
    }
    let mut manifest = match read_manifest(dir) {
        Ok(manifest) => manifest,
        Err(e) => return Some(Err(Damage::Record(e.to_string()))),
    };
    if manifest.files.is_empty() {
        match fingerprint(dir) {
            Ok(files) => manifest.files = files,
            Err(e) => return Some(Err(Damage::Record(e.to_string()))),
        }
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        if let Err(e) = integrity::replace_file(&path, &text) {
            tracing::debug!(path = %path.display(), error = %e, "fingerprints not recorded");
        }
        return Some(Ok(()));
    }
    Some(integrity::check(dir, &manifest.files))
}

/// Fingerprints of an image's files: the regular files of its directory
/// but its record.
fn fingerprint(dir: &Path) -> std::io::Result<Fingerprints> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name != MANIFEST {
            names.push(name);
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    integrity::take(dir, &names)
}

/// The id of the image with this recipe, and the full recipe it hashes.
pub(crate) fn image_id<R: Serialize>(
    kind: &str,
    name: Option<&str>,
    recipe: &R,
) -> (String, serde_json::Value) {
    let recipe = serde_json::json!({
        "builder": BUILDER_VERSION,
        "kind": kind,
        "recipe": recipe,
    });
    let hash = hex::encode(Sha256::digest(recipe.to_string()));
    let id = match name {
        Some(name) => format!("{kind}-{name}-{}", &hash[..16]),
        None => format!("{kind}-{}", &hash[..16]),
    };
    (id, recipe)
}

fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(MANIFEST);
    let text = fs::read(&path).map_err(ImageError::io("read", &path))?;
    serde_json::from_slice(&text)
        .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))
}

/// Waits for and takes the lock on building `id` in `dir` (made if
/// missing), which image and snapshot builds hold while they work, so that
/// concurrent runners build each thing once.
pub(crate) fn lock_build(dir: &Path, id: &str) -> Result<Flock<File>, ImageError> {
    fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
    let lock_path = dir.join(format!(".{id}.lock"));
    let lock = File::create(&lock_path).map_err(ImageError::io("create", &lock_path))?;
    Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| ImageError::io("lock", &lock_path)(e.into()))
}

/// A build directory that is removed unless the build succeeds.
pub(crate) struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub(crate) fn new(path: PathBuf) -> Result<Self, ImageError> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        Ok(Self { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), ImageError> {
        fs::rename(&self.path, dest).map_err(ImageError::io("rename", dest))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Fails with a clear message when `tool` is not installed: before a
/// build, rather than after minutes of it. Starting it is the test, so the
/// search is the one the build itself will make.
fn require_tool(tool: &'static str, package: &'static str) -> Result<(), ImageError> {
    let started = Command::new(tool)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match started {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ImageError::MissingTool { tool, package })
        }
        _ => Ok(()),
    }
}

/// Fails with a clear message when `dir` has less than `need_mib` free.
pub(crate) fn require_space(dir: &Path, need_mib: u64) -> Result<(), ImageError> {
    let stat =
        nix::sys::statvfs::statvfs(dir).map_err(|e| ImageError::io("statvfs", dir)(e.into()))?;
    let free_mib = stat.blocks_available() * stat.fragment_size() / (1 << 20);
    if free_mib < need_mib {
        return Err(ImageError::NoSpace {
            path: dir.to_path_buf(),
            free_mib,
            need_mib,
        });
    }
    Ok(())
}

/// Runs a command to completion, turning a failure into an error that
/// carries the end of its output.
fn run(command: &mut Command) -> Result<String, ImageError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| ImageError::CommandFailed {
        command: shown.clone(),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text += &String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            output: tail.join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_kernel() -> KernelSpec {
        KernelSpec {
            choice: KernelChoice::Debian,
            debug: false,
        }
    }

    #[test]
    fn prune_keeps_the_images_a_paused_session_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path(), DebianSource::new(""), debian_kernel());
        for id in [
            "rootfs-bash-0000000000000000",
            "rootfs-bash-1111111111111111",
        ] {
            fs::create_dir_all(dir.path().join(id)).unwrap();
            fs::write(dir.path().join(id).join(MANIFEST), "{}").unwrap();
        }
        let in_use = [dir
            .path()
            .join("rootfs-bash-1111111111111111")
            .join("rootfs.ext4")];
        let removed = store.prune(&[], &Agent::new(b"agent"), &in_use).unwrap();
        assert_eq!(removed, ["rootfs-bash-0000000000000000"]);
        assert!(dir.path().join("rootfs-bash-1111111111111111").exists());
    }

    #[test]
    fn prune_keeps_every_selectable_kernel_and_removes_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let runner = ImageStore::new(dir.path(), DebianSource::new(""), KernelSpec::default());
        if let Err(e) = runner.kernel_id() {
            eprintln!("skipped: the default kernel's recipe is unknown here ({e})");
            return;
        }
        let agent = Agent::new(b"agent");
        let debian = runner.with_kernel(debian_kernel());
        let mut selectable: Vec<String> = [runner.status(&[], &agent), debian.status(&[], &agent)]
            .concat()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        selectable.sort();
        selectable.dedup();
        let old = "kernel-runner-0000000000000000".to_string();
        for id in selectable.iter().chain([&old]) {
            fs::create_dir_all(dir.path().join(id)).unwrap();
            fs::write(dir.path().join(id).join(MANIFEST), "{}").unwrap();
        }
        // Configured with Debian's kernel, the store keeps the runner one.
        assert_eq!(debian.prune(&[], &agent, &[]).unwrap(), [old]);
        for id in &selectable {
            assert!(dir.path().join(id).exists(), "{id} was removed");
        }
    }

    #[test]
    fn a_damaged_image_is_built_again_and_an_old_one_gets_fingerprints() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: building an image needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path(), DebianSource::new(""), debian_kernel());
        let builds = std::cell::Cell::new(0);
        let build = || {
            store
                .build("initramfs", None, &"recipe", &(), |scratch| {
                    builds.set(builds.get() + 1);
                    fs::write(scratch.join("file"), b"image").unwrap();
                    Ok("1".into())
                })
                .unwrap()
        };
        let path = build();
        assert_eq!(build(), path);
        assert_eq!(builds.get(), 1);
        assert_eq!(read_manifest(&path).unwrap().files.len(), 1);

        fs::write(path.join("file"), b"IMAGE").unwrap();
        assert_eq!(build(), path);
        assert_eq!(builds.get(), 2);
        assert_eq!(fs::read(path.join("file")).unwrap(), b"image");

        // An image recorded before fingerprints gets them when used.
        let manifest = path.join(MANIFEST);
        let mut record: serde_json::Value =
            serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
        record.as_object_mut().unwrap().remove("files");
        fs::write(&manifest, record.to_string()).unwrap();
        build();
        assert_eq!(builds.get(), 2);
        assert_eq!(read_manifest(&path).unwrap().files.len(), 1);
        fs::write(path.join("file"), b"imag").unwrap();
        build();
        assert_eq!(builds.get(), 3);
    }
}
