//! A session's files: writing, reading, listing and removing paths of the
//! working directory for the host, between executions.
//!
//! The run user owns the working directory and may have left anything
//! there, including symbolic links to files it cannot read, and a process
//! of its may still be running. So every path is resolved with `openat2`
//! beneath the working directory, refusing symbolic links at every step
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and each operation works on
//! the file descriptors it resolved, never on a path looked up again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use runner_protocol::{
    COLLECTED_CHUNK, CollectedChunk, FileEntry, FileKind, FileOp, FileProblem, Frame,
};

use crate::consts::{RUN_GID, RUN_UID, WORK_DIR};
use crate::error::{AgentError, Context};
use crate::port::Port;

/// Why an operation did not happen.
#[derive(Debug)]
pub enum FileError {
    /// Refused for what it asked: the path, or what the guest's kernel
    /// said of it. An answer to the request; the session goes on.
    Request {
        problem: FileProblem,
        message: String,
    },
    /// The agent itself failed.
    Agent(AgentError),
}

impl FileError {
    fn invalid(message: String) -> Self {
        FileError::Request {
            problem: FileProblem::Invalid,
            message,
        }
    }
}

/// What the kernel refused, as the request's error; only the agent's
/// port failing is the agent's.
impl From<AgentError> for FileError {
    fn from(error: AgentError) -> Self {
        let errno = match &error {
            AgentError::Io { error, .. } => error.raw_os_error().map(Errno::from_raw),
            AgentError::Sys { error, .. } => Some(*error),
            AgentError::Port(_) | AgentError::Failed(_) => None,
        };
        match errno {
            Some(errno) => FileError::Request {
                problem: problem_of(errno),
                message: error.to_string(),
            },
            None => FileError::Agent(error),
        }
    }
}

/// The kind of refusal `errno` is.
fn problem_of(errno: Errno) -> FileProblem {
    match errno {
        Errno::ENOENT => FileProblem::NotFound,
        Errno::ENOSPC | Errno::EDQUOT => FileProblem::Full,
        _ => FileProblem::Invalid,
    }
}

/// The longest path a request may name, in bytes, and the longest name
/// in it: the kernel's `PATH_MAX` and `NAME_MAX`.
const MAX_PATH: usize = 4095;
const MAX_NAME: usize = 255;

/// Entries per [`Frame::Listing`], well under the agent's frame limit.
const LISTING_CHUNK: usize = 500;

/// Carries out `op`, answering on `out`.
pub fn serve(op: &FileOp, out: &mut Port) -> Result<(), FileError> {
    match op {
        FileOp::Write {
            path,
            offset,
            content,
            executable,
        } => write(path, *offset, content, *executable),
        FileOp::Read { path } => read(path, out),
        FileOp::List { path } => list(path, out),
        FileOp::Remove { path } => remove(path),
    }?;
    Ok(out.send(&Frame::Done)?)
}

/// Writes `content` at `offset` of `path` (created or truncated at 0, with
/// its missing directories), owned by the run user.
pub fn write(path: &str, offset: u64, content: &[u8], executable: bool) -> Result<(), FileError> {
    let (dir, name) = parent(path, true)?;
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK;
    if offset == 0 {
        flags |= OFlag::O_TRUNC;
    }
    if !crate::stage::room_for(content.len() as u64) {
        return Err(explain(path, Errno::ENOSPC));
    }
    let mode = if executable { 0o755 } else { 0o644 };
    let fd = open_beneath(&dir, &name, flags, Mode::from_bits_truncate(mode))
        .map_err(|e| explain(path, e))?;
    let mut file = File::from(fd);
    let meta = file.metadata().context(|| path.to_string())?;
    if !meta.is_file() {
        return Err(FileError::invalid(format!("{path} is not a regular file")));
    }
    if offset == 0 {
        fchown(
            &file,
            Some(Uid::from_raw(RUN_UID)),
            Some(Gid::from_raw(RUN_GID)),
        )
        .context(|| format!("chown {path}"))?;
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
            .context(|| format!("chmod {path}"))?;
    }
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(content))
        .map_err(|e| match e.raw_os_error() {
            Some(errno) => explain(path, Errno::from_raw(errno)),
            None => AgentError::Io {
                what: format!("write {path}"),
                error: e,
            }
            .into(),
        })
}

fn read(path: &str, out: &mut Port) -> Result<(), FileError> {
    let (dir, name) = parent(path, false)?;
    let fd = open_beneath(
        &dir,
        &name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| explain(path, e))?;
    let mut file = File::from(fd);
    let meta = file.metadata().context(|| path.to_string())?;
    if !meta.is_file() {
        return Err(FileError::invalid(format!("{path} is not a regular file")));
    }
    let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
    let mut buf = vec![0; COLLECTED_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut file, &mut buf).context(|| format!("read {path}"))?;
        let last = n < buf.len();
        out.send(&Frame::Collected(CollectedChunk {
            name: path.to_string(),
            offset,
            content: buf[..n].to_vec(),
            executable,
            last,
        }))?;
        offset += n as u64;
        if last {
            return Ok(());
        }
    }
}

fn list(path: &str, out: &mut Port) -> Result<(), FileError> {
    let fd = if path.is_empty() || path == "." {
        work_dir()?
    } else {
        let (dir, name) = parent(path, false)?;
        open_beneath(
            &dir,
            &name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| explain(path, e))?
    };
    let listed = fd.try_clone().context(|| path.to_string())?;
    let mut dir = nix::dir::Dir::from_fd(listed).context(|| format!("list {path}"))?;
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry.context(|| format!("list {path}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let Ok(stat) = fstatat(
            &fd,
            entry.file_name(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue; // gone since the listing began
        };
        entries.push(entry_of(name, &stat));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for piece in entries.chunks(LISTING_CHUNK) {
        out.send(&Frame::Listing(piece.to_vec()))?;
    }
    Ok(())
}

fn entry_of(name: String, stat: &FileStat) -> FileEntry {
    let kind = match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileEntry {
        name,
        kind,
        size: stat.st_size as u64,
        mode: stat.st_mode & 0o7777,
        modified_s: stat.st_mtime,
    }
}

fn remove(path: &str) -> Result<(), FileError> {
    let (dir, name) = parent(path, false)?;
    let stat = fstatat(
        &dir,
        name.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| explain(path, e))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        Ok(remove_tree(&dir, &name).map_err(|e| explain(path, e))?)
    } else {
        Ok(unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir)
            .context(|| format!("remove {path}"))?)
    }
}

/// Removes directory `name` in `parent` with everything in it, never
/// following a link the run user may put in the way: each level is opened
/// with [`open_beneath`], and entries are unlinked by name in their open
/// directory. (std's `remove_dir_all` opens levels with `O_DIRECTORY |
/// O_NOFOLLOW`, which gVisor follows to a link's directory.)
fn remove_tree(parent: &OwnedFd, name: &str) -> Result<(), Errno> {
    let open_dir = |at: &OwnedFd, name: &str| {
        open_beneath(
            at,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
    };
    // The open directories from `name` down, each with its name.
    let mut stack: Vec<(OwnedFd, String)> = vec![(open_dir(parent, name)?, name.to_string())];
    while let Some((dir, _)) = stack.last() {
        let mut listing = nix::dir::Dir::from_fd(nix::unistd::dup(dir)?)?;
        let mut descend = None;
        for entry in listing.iter() {
            let entry = entry?;
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            if entry_name == "." || entry_name == ".." {
                continue;
            }
            let stat = match fstatat(
                dir,
                entry_name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                descend = Some(entry_name);
                break;
            }
            match unlinkat(dir, entry_name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        match descend {
            Some(child) => {
                let opened = open_dir(dir, &child)?;
                stack.push((opened, child));
            }
            None => {
                let (_, emptied) = stack.pop().expect("the loop holds one");
                let at = stack.last().map_or(parent, |(fd, _)| fd);
                unlinkat(at, emptied.as_str(), UnlinkatFlags::RemoveDir)?;
            }
        }
    }
    Ok(())
}

/// The directory that holds `path`, opened beneath the working directory
/// (its missing directories made, owned by the run user, if `create`),
/// and the last component's name.
fn parent(path: &str, create: bool) -> Result<(OwnedFd, String), FileError> {
    let components = components(path)?;
    let (name, dirs) = components.split_last().expect("at least one component");
    let mut dir = work_dir()?;
    for part in dirs {
        let how = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        dir = match open_beneath(&dir, part, how, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ENOENT) if create => {
                mkdirat(&dir, part.as_str(), Mode::from_bits_truncate(0o755))
                    .context(|| format!("create directory {part} of {path}"))?;
                let made =
                    open_beneath(&dir, part, how, Mode::empty()).map_err(|e| explain(path, e))?;
                fchown(
                    &made,
                    Some(Uid::from_raw(RUN_UID)),
                    Some(Gid::from_raw(RUN_GID)),
                )
                .context(|| format!("chown {part}"))?;
                made
            }
            Err(e) => return Err(explain(path, e)),
        };
    }
    Ok((dir, name.clone()))
}

/// `path`'s components: relative, inside the working directory, each a
/// name the kernel takes.
fn components(path: &str) -> Result<Vec<String>, FileError> {
    if path.contains('\0') {
        return Err(FileError::invalid(format!(
            "{path:?} contains a NUL byte, which no path can"
        )));
    }
    if path.len() > MAX_PATH {
        return Err(FileError::invalid(format!(
            "the path is {} bytes long; a path can be at most {MAX_PATH}",
            path.len()
        )));
    }
    let parts: Vec<String> = Path::new(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(part) => Ok(part.to_string_lossy().into_owned()),
            _ => Err(()),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| {
            FileError::invalid(format!(
                "{path:?} is not a relative path inside the working directory"
            ))
        })?;
    if parts.is_empty() {
        return Err(FileError::invalid(format!(
            "{path:?} names the working directory itself"
        )));
    }
    if let Some(long) = parts.iter().find(|part| part.len() > MAX_NAME) {
        return Err(FileError::invalid(format!(
            "a name in {path:?} is {} bytes long; a name can be at most {MAX_NAME}",
            long.len()
        )));
    }
    Ok(parts)
}

/// The working directory, opened: the agent's own to open.
pub(crate) fn work_dir() -> Result<OwnedFd, AgentError> {
    nix::fcntl::open(
        WORK_DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("open {WORK_DIR}"))
}

/// Opens `name` (a relative path) in `dir` without leaving it or following
/// any link.
pub(crate) fn open_beneath(
    dir: &impl AsFd,
    name: &str,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match openat2(dir.as_fd(), name, how) {
            Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            opened => return opened,
        }
    }
    open_walking(dir, name, flags, mode)
}

/// [`open_beneath`] where the kernel has no `openat2` (gVisor): one
/// component at a time, none of them `..` (`EXDEV`, as `RESOLVE_BENEATH`
/// refuses an escape) and none of them a link (`ELOOP`, as
/// `RESOLVE_NO_SYMLINKS`). Each is first opened as a path only
/// (`O_PATH | O_NOFOLLOW`, which opens a link itself) and looked at, then
/// the last is opened for what the caller asked through `/proc/self/fd`,
/// which reaches exactly that file: gVisor's `openat` follows a final link
/// to a directory despite `O_NOFOLLOW` when `O_DIRECTORY` is given.
fn open_walking(dir: &impl AsFd, name: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if name.starts_with('/') || parts.contains(&"..") {
        return Err(Errno::EXDEV);
    }
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Errno::ENOENT);
    };
    let path_only = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut held: Option<OwnedFd> = None;
    for part in dirs {
        let at = held.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
        let next = nix::fcntl::openat(at, *part, path_only, Mode::empty())?;
        match file_type(&next)? {
            SFlag::S_IFDIR => held = Some(next),
            SFlag::S_IFLNK => return Err(Errno::ELOOP),
            _ => return Err(Errno::ENOTDIR),
        }
    }
    let at = held.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
    let found = match nix::fcntl::openat(at, *last, path_only, Mode::empty()) {
        Err(Errno::ENOENT) if flags.contains(OFlag::O_CREAT) => {
            // Made here, with O_NOFOLLOW, which gVisor keeps for O_CREAT: a
            // link put in its place meanwhile fails with ELOOP.
            return nix::fcntl::openat(
                at,
                *last,
                flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                mode,
            );
        }
        found => found?,
    };
    match file_type(&found)? {
        SFlag::S_IFLNK => return Err(Errno::ELOOP),
        SFlag::S_IFDIR if flags.contains(OFlag::O_WRONLY) || flags.contains(OFlag::O_RDWR) => {
            return Err(Errno::EISDIR);
        }
        SFlag::S_IFDIR => {}
        _ if flags.contains(OFlag::O_DIRECTORY) => return Err(Errno::ENOTDIR),
        _ => {}
    }
    let reopen = flags & !(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW);
    nix::fcntl::open(
        format!("/proc/self/fd/{}", found.as_raw_fd()).as_str(),
        reopen | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The type of the file `fd` is open on.
fn file_type(fd: &OwnedFd) -> Result<SFlag, Errno> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT)
}

/// An error for `path`, in the words a user of the API understands.
fn explain(path: &str, errno: Errno) -> FileError {
    let (problem, message) = match errno {
        Errno::ENOENT => (FileProblem::NotFound, "no such file or directory"),
        Errno::ENAMETOOLONG => (FileProblem::Invalid, "a name in it is too long"),
        Errno::ELOOP => (
            FileProblem::Invalid,
            "a symbolic link is in the way; links are not followed",
        ),
        Errno::ENOTDIR => (
            FileProblem::Invalid,
            "a part of the path is not a directory",
        ),
        Errno::EISDIR => (FileProblem::Invalid, "it is a directory"),
        Errno::EXDEV => (
            FileProblem::Invalid,
            "it leads outside the working directory",
        ),
        Errno::ENOSPC => (
            FileProblem::Full,
            "the session's disk is full (its disk_mib limit)",
        ),
        Errno::EDQUOT => (
            FileProblem::Full,
            "the session's disk is full (its disk_mib limit)",
        ),
        other => (problem_of(other), other.desc()),
    };
    FileError::Request {
        problem,
        message: format!("{path}: {message}"),
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_work_dir() {
        assert_eq!(components("a/./b").unwrap(), ["a", "b"]);
        assert_eq!(components("main.py").unwrap(), ["main.py"]);
        let long = "é".repeat(130);
        let longest = "x".repeat(255);
        assert!(components(&longest).is_ok());
        let too_long = "x".repeat(300);
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a\0b",
            &long,
            &too_long,
        ] {
            match components(bad) {
                Err(FileError::Request { problem, .. }) => {
                    assert_eq!(problem, FileProblem::Invalid, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_the_kernel_refuses_is_the_requests_error() {
        let error = AgentError::Sys {
            what: "open a".into(),
            error: Errno::EINVAL,
        };
        assert!(matches!(
            FileError::from(error),
            FileError::Request {
                problem: FileProblem::Invalid,
                ..
            }
        ));
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let error = AgentError::Io {
            what: "write a".into(),
            error: full,
        };
        assert!(matches!(
            FileError::from(error),
            FileError::Request {
                problem: FileProblem::Full,
                ..
            }
        ));
        let port = AgentError::Port(std::io::Error::from_raw_os_error(libc::EPIPE));
        assert!(matches!(FileError::from(port), FileError::Agent(_)));
    }
}
