//! The Runner Codes guest agent.
//!
//! The kernel starts this binary as `/init` from the initramfs. As PID 1 it
//! prepares the machine ([`boot`]): loads the virtio modules, mounts the
//! language's root filesystem read-only under a tmpfs overlay and switches
//! into it. Then it forks: the child serves the host ([`serve`]) and PID 1
//! stays behind only to reap orphans and to power the VM off when the server
//! ends. In a gVisor sandbox `runsc` starts it as the container's first
//! process, with the root filesystem already in place ([`platform`]); the
//! rest is the same.

mod boot;
mod consts;
mod devices;
mod error;
mod event;
mod files;
mod inputs;
mod mount;
mod net;
mod outputs;
mod platform;
mod port;
mod serve;
mod stage;
mod steal;
mod wake;

use std::process::ExitCode;

use nix::unistd::{ForkResult, fork};

fn main() -> ExitCode {
    platform::detect();
    if std::process::id() != 1 {
        eprintln!("runner-agent: must run as PID 1 inside a Runner Codes VM or gVisor sandbox");
        return ExitCode::FAILURE;
    }
    let mode = match boot::init() {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("runner-agent: boot failed: {e}");
            boot::power_off();
        }
    };
    // SAFETY: no other thread exists yet in this process, so the child
    // inherits no lock held by another thread.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = match serve::run(mode) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("runner-agent: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => boot::reap_until(child),
        Err(e) => {
            eprintln!("runner-agent: fork: {e}");
            boot::power_off();
        }
    }
}
