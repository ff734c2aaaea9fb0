//! The terminal of an interactive stage run on one.

use std::os::fd::{AsRawFd, OwnedFd};

use runner_protocol::WindowSize;

use crate::error::{AgentError, Context};

/// Ctrl-D: end of input on a terminal.
pub(super) const EOT: u8 = 0x04;

/// Gives the terminal `master` a new size; the kernel tells its foreground
/// job with `SIGWINCH`.
pub(super) fn resize_terminal(master: &OwnedFd, size: WindowSize) {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from this stack frame.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
}

/// A new terminal of `size`: its master side (close-on-exec, for the
/// agent) and its slave side (for the stage).
pub(super) fn open_terminal(size: WindowSize) -> Result<(OwnedFd, OwnedFd), AgentError> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pair = nix::pty::openpty(Some(&winsize), None).context(|| "open a terminal".into())?;
    nix::fcntl::fcntl(
        &pair.master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context(|| "set close-on-exec on the terminal".into())?;
    Ok((pair.master, pair.slave))
}
