//! The guest's fixed names and numbers, shared by the rooms that use them.

/// The unprivileged user every program runs as.
pub const RUN_UID: u32 = 1000;
pub const RUN_GID: u32 = 1000;
/// The programs' working directory, their home, and a session's files.
pub const WORK_DIR: &str = "/home/runner";
/// Where the agent keeps the kernel's devtmpfs once `/dev` is the programs'
/// (its port, the root disk).
pub const AGENT_DEVICES: &str = "/run/runner/dev";
