//! Where the agent runs.
//!
//! In a VM it is the guest kernel's `/init` and brings the machine up
//! itself (the `boot` module): modules, the root filesystem, `/dev`, cgroup
//! v2. In a gVisor sandbox it is the container's first process: `runsc`
//! has put the language's root filesystem in place (read-only, under an
//! overlay in memory), with `/proc`, `/sys` and `/dev`, and handed the agent
//! its ports as its standard descriptors (see
//! [`runner_protocol::GVISOR_AGENT_ARG`]). gVisor's cgroups are version 1
//! and count without enforcing: the agent enforces the memory limit itself
//! (see `stage::cgroup`), under the host cgroup that bounds the whole
//! sandbox.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Vm,
    Gvisor,
}

static PLATFORM: OnceLock<Platform> = OnceLock::new();

/// Reads the platform from the agent's arguments, once, at start.
pub fn detect() -> Platform {
    *PLATFORM.get_or_init(|| {
        if std::env::args().any(|arg| arg == runner_protocol::GVISOR_AGENT_ARG) {
            Platform::Gvisor
        } else {
            Platform::Vm
        }
    })
}

/// The platform [`detect`] found.
pub fn current() -> Platform {
    PLATFORM.get().copied().unwrap_or(Platform::Vm)
}
