//! The sandbox a stage's processes run in: what the child does between
//! fork and exec (the stage's cgroup, a session of its own, its rlimits,
//! the run user for good), and the scratch space it may fill.

use std::sync::atomic::{AtomicU64, Ordering};

use runner_protocol::{Limits, SessionSpec};

use super::cgroup::ProcsFds;
use super::prestart::CONTROL_FD;
use crate::consts::{RUN_GID, RUN_UID, WORK_DIR};
use crate::error::{AgentError, Context};
use crate::platform::Platform;

pub(super) fn prlimit(
    pid: libc::pid_t,
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> Result<(), AgentError> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads the struct on this stack frame and writes nothing
    // (the old-limit pointer is null).
    let ret = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
    if ret < 0 {
        Err(format!(
            "set resource limit {resource} of process {pid}: {}",
            std::io::Error::last_os_error()
        )
        .into())
    } else {
        Ok(())
    }
}

/// RLIMIT_CPU for one process, a backstop behind the cgroup poll. The
/// guest's own count, which the rlimit goes by, includes time its vCPU
/// waited for a host CPU under TCG (see `crate::steal`); the poll takes that off
/// and the backstop allows for it: twice the limit, and a second more.
pub(super) fn backstop_cpu_seconds(limits: &Limits) -> u64 {
    (limits.cpu_time_ms * 2).div_ceil(1000) + 1
}

/// In a gVisor sandbox, the `RLIMIT_NPROC` that caps a stage at its
/// process limit. gVisor's `pids.max` lets a group grow several tasks
/// past its limit (24 processes at a limit of 16, measured), while it
/// enforces `RLIMIT_NPROC` at one task past it (the run user's, counting
/// threads): so the limit less one. It counts all of the run user's tasks,
/// so in a session a stage's limit also counts what earlier stages left
/// running. `None` in a VM, whose cgroup is exact.
pub(super) fn gvisor_tasks(limits: &Limits) -> Option<u64> {
    (crate::platform::current() == Platform::Gvisor)
        .then(|| u64::from(limits.processes).saturating_sub(1).max(1))
}

/// Runs in the child between fork and exec: join the stage's cgroup, start a
/// new session (so the process group can be killed as one), set the rlimits
/// (a prestarted runtime gets them at the hand-over), put the control pipe
/// on fd 3 if there is one, give the stdio pipes to the run user, and drop
/// to the run user for good.
pub(super) fn enter_sandbox(
    cgroup_procs: ProcsFds,
    limits: Option<&Limits>,
    control: Option<i32>,
) -> std::io::Result<()> {
    fn check(ret: libc::c_int) -> std::io::Result<()> {
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    fn rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct on this stack frame.
        check(unsafe { libc::setrlimit(resource, &limit) })
    }
    for fd in cgroup_procs.into_iter().filter(|&fd| fd >= 0) {
        // SAFETY: a write from a static buffer to a file descriptor this
        // process owns; async-signal-safe.
        check(unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as libc::c_int)?;
    }
    // SAFETY: setsid takes no arguments and is async-signal-safe.
    check(unsafe { libc::setsid() })?;
    // On a terminal, it becomes the new session's controlling terminal, so
    // that Ctrl-C, job control and /dev/tty work.
    // SAFETY: isatty on a descriptor this process owns.
    if unsafe { libc::isatty(0) } == 1 {
        // SAFETY: TIOCSCTTY takes an integer argument and writes nothing.
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    }
    rlimit(libc::RLIMIT_CORE, 0, 0)?;
    if let Some(limits) = limits {
        rlimit(
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        )?;
        // A backstop for a single process; the cgroup poll covers the tree.
        // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
        let cpu_seconds = backstop_cpu_seconds(limits);
        rlimit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
        if let Some(tasks) = gvisor_tasks(limits) {
            rlimit(libc::RLIMIT_NPROC, tasks, tasks)?;
        }
    }
    if let Some(fd) = control {
        if fd == CONTROL_FD {
            // dup2 onto itself would keep close-on-exec.
            // SAFETY: fcntl on a file descriptor this process owns.
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        } else {
            // SAFETY: dup2 between file descriptors this process owns; the
            // copy does not have close-on-exec.
            check(unsafe { libc::dup2(fd, CONTROL_FD) })?;
        }
    }
    // The stage's stdin, stdout and stderr pipes (or terminal) were made
    // by root, mode 0600: hand them to the run user, so that it can open
    // them again by name (/dev/stdout is /proc/self/fd/1, /dev/tty) as it
    // could its own. /dev/null and other files keep their owner.
    for fd in 0..=2 {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a stat into the buffer on this stack frame;
        // it is read only when fstat succeeded; isatty reads nothing.
        let is_own = unsafe {
            libc::fstat(fd, stat.as_mut_ptr()) == 0
                && (stat.assume_init().st_mode & libc::S_IFMT == libc::S_IFIFO
                    || libc::isatty(fd) == 1)
        };
        if is_own {
            // SAFETY: fchown on a descriptor this process owns.
            check(unsafe { libc::fchown(fd, RUN_UID, RUN_GID) })?;
        }
    }
    // SAFETY: plain system calls on integers; all are async-signal-safe.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(RUN_GID, RUN_GID, RUN_GID))?;
        check(libc::setresuid(RUN_UID, RUN_UID, RUN_UID))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// The places a program can write, each a tmpfs mounted at boot. Before a
/// stage each is resized to what it holds plus the stage's file limit, so
/// that the stage writes at most that much there; one left full at the end
/// means the stage hit the limit (a program that gets ENOSPC or EFBIG may
/// carry on, so the exit status alone does not tell). In a session's VM
/// the working directory never grows past the session's disk, and goes
/// back to that size after the stage, for the files the host writes.
///
/// gVisor takes a tmpfs's size only when it is mounted, not on a remount:
/// there each place's cap is kept here, the stage's supervision polls what
/// the places hold and kills the stage at a cap ([`Scratch::over`]), and
/// the files the host writes are checked against the session's disk
/// ([`room_for`]). A stage may then write up to one poll's worth past the
/// cap before it is killed.
pub(super) struct Scratch {
    /// gVisor: each place with the most it may hold in this stage.
    caps: Vec<(&'static str, u64)>,
}

const SCRATCH_DIRS: &[&str] = &[WORK_DIR, "/tmp", "/dev/shm"];
const PAGE: u64 = 4096;

/// gVisor: the session's disk (see [`Scratch`]); no session, no cap.
static SESSION_DISK: AtomicU64 = AtomicU64::new(u64::MAX);

impl Scratch {
    pub(super) fn cap(limit: u64, session: Option<&SessionSpec>) -> Result<Self, AgentError> {
        let mut caps = Vec::new();
        for dir in SCRATCH_DIRS {
            let used = used_bytes(dir)?;
            let mut size = used + limit;
            if let (Some(session), true) = (session, *dir == WORK_DIR) {
                size = size.min(session.disk_bytes.max(used));
            }
            match crate::platform::current() {
                Platform::Vm => resize(dir, size)?,
                Platform::Gvisor => caps.push((*dir, size)),
            }
        }
        Ok(Scratch { caps })
    }

    /// A session's working directory back at the session's disk size.
    pub(super) fn release(self, session: &SessionSpec) -> Result<(), AgentError> {
        session_disk(session)
    }

    /// gVisor: whether a place holds its cap (the stage is to be killed);
    /// always `false` in a VM, whose tmpfs sizes stop the writes.
    pub(super) fn over(&self) -> bool {
        self.caps
            .iter()
            .any(|(dir, cap)| used_bytes(dir).is_ok_and(|used| used >= *cap))
    }

    pub(super) fn any_full(&self) -> bool {
        if crate::platform::current() == Platform::Gvisor {
            return self.over();
        }
        SCRATCH_DIRS.iter().any(|dir| {
            nix::sys::statvfs::statvfs(*dir)
                .map(|s| s.blocks_available() * s.fragment_size() < PAGE)
                .unwrap_or(false)
        })
    }
}

/// Sets the working directory of a session's VM to the session's disk
/// size (or what it holds, if that is more); in gVisor, keeps the size
/// for [`room_for`].
pub fn session_disk(session: &SessionSpec) -> Result<(), AgentError> {
    match crate::platform::current() {
        Platform::Vm => resize(WORK_DIR, session.disk_bytes.max(used_bytes(WORK_DIR)?)),
        Platform::Gvisor => {
            SESSION_DISK.store(session.disk_bytes, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// Whether `bytes` more fit in the working directory: in gVisor, under the
/// session's disk; in a VM the tmpfs says so itself (ENOSPC).
pub fn room_for(bytes: u64) -> bool {
    match crate::platform::current() {
        Platform::Vm => true,
        Platform::Gvisor => used_bytes(WORK_DIR).map_or(true, |used| {
            used + bytes <= SESSION_DISK.load(Ordering::Relaxed)
        }),
    }
}

fn used_bytes(dir: &str) -> Result<u64, AgentError> {
    let stat = nix::sys::statvfs::statvfs(dir).context(|| format!("statvfs {dir}"))?;
    Ok((stat.blocks() - stat.blocks_free()) * stat.fragment_size())
}

/// Remounts the tmpfs at `dir` with `size` bytes, in whole pages.
fn resize(dir: &str, size: u64) -> Result<(), AgentError> {
    let size = size.div_ceil(PAGE) * PAGE;
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        Some(format!("size={size}").as_str()),
    )
    .context(|| format!("resize {dir} to {size} bytes"))
}
