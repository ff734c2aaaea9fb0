//! PID 1 duties: bring up the machine, then reap.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::init_module;
use nix::mount::MsFlags;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, chdir, chroot};

use crate::error::{AgentError, Context};
use crate::mount::{mount_fs, wait_for};
use crate::platform::Platform;

/// What the host asked for on the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal VM: mount the root filesystem and serve one execution.
    Serve,
    /// Acceleration probe (`runner.probe`): no disk, just say hello.
    Probe,
}

impl Mode {
    /// Where the agent finds the kernel's device nodes (its port).
    pub fn devices(self) -> &'static str {
        match self {
            Mode::Serve => crate::consts::AGENT_DEVICES,
            Mode::Probe => "/dev",
        }
    }
}

/// Where the host's initramfs puts the modules and their load order.
const MODULE_DIR: &str = "/lib/modules";
const MODULE_ORDER: &str = "/etc/runner/modules";
const ROOT_DEVICE: &str = "/dev/vda";

pub fn init() -> Result<Mode, AgentError> {
    match crate::platform::current() {
        Platform::Vm => init_vm(),
        Platform::Gvisor => init_sandbox(),
    }
}

fn init_vm() -> Result<Mode, AgentError> {
    mount_fs("proc", "/proc", "proc", MsFlags::empty(), None)?;
    mount_fs("sysfs", "/sys", "sysfs", MsFlags::empty(), None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::empty(), None)?;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    load_modules(&cmdline)?;

    if cmdline.split_whitespace().any(|arg| arg == "runner.probe") {
        return Ok(Mode::Probe);
    }

    wait_for(ROOT_DEVICE, Duration::from_secs(10))?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    mount_fs(ROOT_DEVICE, "/mnt/lower", "ext4", ro, None)?;
    mount_fs(
        "tmpfs",
        "/mnt/upper",
        "tmpfs",
        MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    for dir in ["/mnt/upper/data", "/mnt/upper/work"] {
        fs::create_dir(dir).context(|| format!("mkdir {dir}"))?;
    }
    mount_fs(
        "overlay",
        "/mnt/root",
        "overlay",
        MsFlags::MS_NODEV,
        Some("lowerdir=/mnt/lower,upperdir=/mnt/upper/data,workdir=/mnt/upper/work"),
    )?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("/mnt/root{dir}");
        mount_fs(dir, &target, "", MsFlags::MS_MOVE, None)?;
    }
    // The classic switch_root: the initramfs cannot be pivoted away from, so
    // move the new root over `/` and chroot into it.
    chdir("/mnt/root").context(|| "chdir /mnt/root".into())?;
    mount_fs(".", "/", "", MsFlags::MS_MOVE, None)?;
    chroot(".").context(|| "chroot".into())?;
    chdir("/").context(|| "chdir /".into())?;

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    mount_fs("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755"))?;
    crate::devices::set_up()?;
    scratch_and_names()?;
    // Controllers for the per-stage cgroups; a kernel without one of them
    // still runs programs, with fewer limits.
    let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids");
    Ok(Mode::Serve)
}

/// In a gVisor sandbox: `runsc` mounted the root filesystem, `/proc`,
/// `/sys` and a `/dev` of the usual devices, and bound the agent's own
/// directory at `/mnt`, which programs must not see. gVisor keeps such a
/// bind out of its mount table (it cannot be unmounted), so an empty,
/// read-only tmpfs covers it, as empty as a VM's `/mnt`. gVisor's cgroups
/// are version 1, one hierarchy per controller (see `stage::cgroup`).
fn init_sandbox() -> Result<Mode, AgentError> {
    // gVisor lets any user read a dumpable process's /proc/<pid>/environ;
    // the agent's are root's alone, as a kernel keeps them.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(format!(
            "prctl(PR_SET_DUMPABLE): {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "tmpfs",
        "/mnt",
        "tmpfs",
        nosuid | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("mode=0755,size=4k"),
    )?;
    // gVisor's /dev has two entries a VM's has not (see `devices`).
    for extra in ["/dev/net/tun", "/dev/fuse"] {
        let _ = fs::remove_file(extra);
    }
    let _ = fs::remove_dir("/dev/net");
    mount_fs("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755"))?;
    mount_fs(
        "tmpfs",
        "/sys/fs/cgroup",
        "tmpfs",
        nosuid,
        Some("mode=0755"),
    )?;
    for controller in crate::stage::CGROUP_V1_CONTROLLERS {
        let target = format!("/sys/fs/cgroup/{controller}");
        mount_fs("cgroup", &target, "cgroup", nosuid, Some(controller))?;
    }
    // The programs' shared memory, a tmpfs sized per stage as in a VM.
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    scratch_and_names()?;
    Ok(Mode::Serve)
}

/// What VMs and sandboxes have alike: the scratch directories, the host
/// name and the loopback interface.
fn scratch_and_names() -> Result<(), AgentError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // Where programs can write: each its own tmpfs, so that the size of
    // files a stage writes can be capped (see stage::Scratch); /dev/shm is
    // the third.
    mount_fs("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777"))?;
    mount_fs(
        "tmpfs",
        "/home/runner",
        "tmpfs",
        nosuid,
        Some("mode=0700,uid=1000,gid=1000"),
    )?;
    // The image's /etc/hostname and /etc/hosts name the same host.
    nix::unistd::sethostname(runner_protocol::GUEST_HOSTNAME)
        .context(|| "set the hostname".into())?;
    match crate::platform::current() {
        Platform::Vm => loopback_up(),
        // gVisor's network stack brings up its loopback itself and takes
        // no interface ioctls; its address comes by netlink.
        Platform::Gvisor => add_loopback_alias_by_netlink(),
    }
}

/// Brings up `lo`, which gives it 127.0.0.1 and ::1: programs talk to
/// themselves over localhost. It is the VM's only interface; no other is
/// ever configured, so the VM has no network.
///
/// It also gets 127.0.1.1, the address `/etc/hosts` gives the host name, as
/// on Debian. glibc answers IPv4-only lookups made with `AI_ADDRCONFIG`
/// (`getent ahostsv4 localhost`, and programs that ask the same way) only
/// when the machine has an IPv4 address other than 127.0.0.1; with this one
/// they find localhost as they do on any Debian machine.
fn loopback_up() -> Result<(), AgentError> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: `fd` is a descriptor this process just opened and owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let ioctl = |request: libc::c_ulong, ifreq: &mut libc::ifreq, what: &str| {
        // SAFETY: the SIOC*IF* requests read and write only the ifreq on
        // the caller's stack frame, which outlives the call.
        if unsafe { libc::ioctl(socket.as_raw_fd(), request, ifreq as *mut libc::ifreq) } < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()).into());
        }
        Ok(())
    };
    let mut lo = ifreq("lo");
    ioctl(libc::SIOCGIFFLAGS, &mut lo, "read the flags of lo")?;
    // SAFETY: the kernel filled ifru_flags, the union's member for the
    // request above.
    unsafe { lo.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(libc::SIOCSIFFLAGS, &mut lo, "bring up lo")?;

    let mut alias = ifreq("lo:0");
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 1, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a sockaddr_in fits the union's sockaddr member (both are 16
    // bytes), which SIOCSIFADDR reads as one.
    unsafe {
        std::ptr::write_unaligned(
            std::ptr::addr_of_mut!(alias.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
            address,
        )
    };
    ioctl(libc::SIOCSIFADDR, &mut alias, "give lo 127.0.1.1")
}

/// Gives `lo` 127.0.1.1 (see [`loopback_up`]) by an `RTM_NEWADDR`
/// request on a route netlink socket, the way `ip addr add` does: gVisor
/// takes that where it refuses `SIOCSIFADDR`. A restored gVisor sandbox
/// has lost it (its network stack is made anew), so waking one adds it
/// again; one that has it already is left as it is.
pub fn add_loopback_alias_by_netlink() -> Result<(), AgentError> {
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    // SAFETY: if_nametoindex reads the NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        return Err(format!("no lo: {}", std::io::Error::last_os_error()).into());
    }
    let address = [127u8, 0, 1, 1];
    let mut message = Vec::with_capacity(40);
    let length: u32 = 16 + 8 + 2 * 8;
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    // struct ifaddrmsg: family, prefix length, flags, scope, index.
    message.extend_from_slice(&[libc::AF_INET as u8, 8, 0, libc::RT_SCOPE_HOST]);
    message.extend_from_slice(&index.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&address);
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: `fd` is a descriptor this process just opened and owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data for which all zeroes is a valid
    // value (the kernel's address).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto reads `message` and the address on this stack frame.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            std::ptr::addr_of!(kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(format!("netlink send: {}", std::io::Error::last_os_error()).into());
    }
    let mut reply = [0u8; 256];
    // SAFETY: recv writes at most `reply.len()` bytes into `reply`.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if got < 20 {
        return Err(format!("netlink reply: {}", std::io::Error::last_os_error()).into());
    }
    // An NLMSG_ERROR whose error is 0 is the acknowledgement.
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if kind != libc::NLMSG_ERROR as u16 || (error != 0 && error != -libc::EEXIST) {
        return Err(format!(
            "give lo 127.0.1.1: {}",
            std::io::Error::from_raw_os_error(-error)
        )
        .into());
    }
    Ok(())
}

/// An interface request for `name`, otherwise zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    request
}

/// Loads the modules of a kernel that has them (Debian's), each with its
/// parameters from the kernel command line (`kernel_args`), as modprobe
/// would pass them.
fn load_modules(cmdline: &str) -> Result<(), AgentError> {
    let order = match fs::read_to_string(MODULE_ORDER) {
        Ok(order) => order,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read {MODULE_ORDER}: {e}").into()),
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULE_DIR).join(format!("{name}.ko"));
        let image = fs::read(&path).context(|| format!("read {}", path.display()))?;
        let params = CString::new(module_params(cmdline, name))
            .map_err(|_| format!("parameters of module {name} hold a NUL byte"))?;
        match init_module(&image, &params) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("load module {name}: {e}").into()),
        }
    }
    Ok(())
}

/// The parameters the kernel command line gives module `name`
/// (`name.param=value`, with `-` and `_` alike in the name), space-separated.
fn module_params(cmdline: &str, name: &str) -> String {
    let canonical = |s: &str| s.replace('-', "_");
    let name = canonical(name);
    cmdline
        .split_whitespace()
        .filter_map(|arg| {
            let (module, param) = arg.split_once('.')?;
            (canonical(module) == name && !param.is_empty()).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// PID 1 after the fork: reap every process that ends (the server's own
/// children are reaped by the server; orphans land here), and power off when
/// the server itself ends.
pub fn reap_until(server: Pid) -> ! {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) if pid == server => {
                power_off()
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => power_off(),
            Err(e) => {
                eprintln!("runner-agent: waitpid: {e}");
                sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Ends the VM; in a gVisor sandbox, the first process's exit ends it.
pub fn power_off() -> ! {
    if crate::platform::current() == Platform::Gvisor {
        std::process::exit(0);
    }
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on error; PID 1 must never exit.
    loop {
        sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::module_params;

    #[test]
    fn module_parameters_come_from_the_command_line_as_modprobe_reads_them() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
            virtio-mmio.device=512@0xfeb00c00:11 rdinit=/init virtio_mmio. virtio_blkx.a=1";
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(module_params(cmdline, "virtio_blk"), "");
    }
}
