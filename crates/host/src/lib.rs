//! The Runner Codes host library.
//!
//! - [`capacity`]: one capacity rule for the machine, shared by every
//!   runner process;
//! - [`config`]: the configuration of every command, from defaults, a TOML
//!   file, `RUNNER_*` variables and flags;
//! - [`lang`]: the languages, as data;
//! - [`image`]: guest kernel, initramfs and root filesystems, built from
//!   Debian packages and cached by content;
//! - [`vmm`]: virtual machine monitors behind one trait, chosen by
//!   [`vmm::select`];
//! - [`exec`]: the execution engine: a request planned once, a VM acquired,
//!   the agent conversation, the result; [`Runner`] is its facade;
//! - [`snapshot`]: VMs saved ready to run, restored instead of booted;
//! - [`pool`]: warm pools of restored VMs waiting for requests;
//! - [`session`]: sessions, one VM serving an owner's many executions;
//! - [`state`]: where all of it lives on the host;
//! - [`machine`]: facts about the host (its memory, its CPU).
//!
//! The library reads no environment variables: the binary builds a
//! [`Config`] and hands it down.

pub mod capacity;
pub mod config;
pub mod exec;
pub mod image;
pub mod integrity;
pub mod judge;
pub mod lang;
pub mod machine;
pub mod net;
pub mod pool;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod vmm;

pub use config::{Config, ConfigError, Sources};
pub use exec::{
    ExecError, ExecutionRequest, ExecutionResult, LimitPolicy, OutputChunk, Plan, PlanError,
    Runner, RunnerError, Stage, Status,
};

/// An error and its causes in one line, "what failed: because: because",
/// for messages that travel as text (results, logs).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message += &format!(": {cause}");
        source = cause.source();
    }
    message
}
