//! Making a VM restored from a snapshot unique: every clone of a snapshot
//! starts with the same kernel RNG state and the clock of the moment the
//! snapshot was taken.

use std::fs::File;
use std::os::fd::AsRawFd;

use runner_protocol::Wake;

use crate::error::{AgentError, Context};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// In a gVisor sandbox neither is needed: its random numbers come from the
/// host's kernel at every read and its clock is the host's, so a restored
/// sandbox shares neither with its snapshot. Its loopback lost the address
/// the agent gave it, though.
pub fn wake(wake: &Wake) -> Result<(), AgentError> {
    if crate::platform::current() == crate::platform::Platform::Gvisor {
        return crate::boot::add_loopback_alias_by_netlink();
    }
    reseed(&wake.entropy)?;
    set_clock(wake.unix_time_ns)
}

/// Mixes `entropy` into the input pool, credited, then makes the kernel's
/// generator reseed from it now rather than at its next scheduled reseed.
fn reseed(entropy: &[u8]) -> Result<(), AgentError> {
    if entropy.len() < 32 {
        return Err(format!("{} bytes of entropy; 32 or more needed", entropy.len()).into());
    }
    let random = File::options()
        .write(true)
        .open("/dev/random")
        .context(|| "open /dev/random".into())?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + entropy.len().next_multiple_of(4));
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(8 + entropy.len().next_multiple_of(4), 0);
    let words: Vec<u32> = info
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // SAFETY: `words` is a rand_pool_info whose buffer holds buf_size bytes,
    // aligned for its int fields, alive for the call.
    let added = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, words.as_ptr()) };
    if added < 0 {
        return Err(format!("RNDADDENTROPY: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if reseeded < 0 {
        return Err(format!("RNDRESEEDCRNG: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

fn set_clock(unix_time_ns: u64) -> Result<(), AgentError> {
    let time = nix::sys::time::TimeSpec::new(
        (unix_time_ns / 1_000_000_000) as libc::time_t,
        (unix_time_ns % 1_000_000_000) as libc::c_long,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time)
        .context(|| "set the clock".into())
}
