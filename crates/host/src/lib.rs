//! The Runner Codes host library, in three layers.
//!
//! Under the engine, what it is made of:
//! - [`config`]: what the engine needs of the configuration;
//! - [`lang`]: the languages, as data;
//! - [`image`]: guest kernel, initramfs and root filesystems, built from
//!   Debian packages and cached by content;
//! - [`vmm`]: virtual machine monitors behind one trait, chosen by
//!   [`vmm::select`];
//! - [`snapshot`]: the store of VMs saved ready to run;
//! - [`pool`]: warm pools of restored VMs waiting for requests;
//! - [`net`]: what a program may reach of the network, and the proxy that
//!   enforces it;
//! - [`capacity`]: one capacity rule for the machine, shared by every
//!   runner process;
//! - [`state`], [`integrity`], [`machine`]: where it all lives on the host,
//!   how damage is found, facts about the host.
//!
//! The engine's floor, [`exec`]: a request planned once, a VM acquired,
//! the agent conversation, the result. It knows nothing of what it is used
//! for.
//!
//! The shapes of work on that floor: [`oneshot`] (one VM, one execution),
//! [`judge`] (outputs judged; submissions of many tests), [`session`] (one
//! VM, an owner's many executions) and [`prepare`] (snapshots made and
//! pools tended ahead of requests). Above them, [`Runner`] ([`runner`]) is
//! the facade the front ends hold, and [`bodies`] reads the API's request
//! bodies as the engine's requests.
//!
//! The library reads no environment variables and speaks no HTTP: the
//! binary builds a [`Config`] and hands it down; the front ends map its
//! errors' codes to their own.

pub mod bodies;
pub mod capacity;
pub mod compile_cache;
pub mod config;
pub mod exec;
pub mod image;
pub mod integrity;
pub mod judge;
pub mod lang;
pub mod machine;
pub mod net;
pub mod oneshot;
pub mod pool;
pub mod prepare;
pub mod runner;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod vmm;

pub use config::{Config, ConfigError};
pub use exec::{
    ExecError, ExecutionRequest, ExecutionResult, LimitPolicy, OutputChunk, Plan, PlanError, Stage,
    Status,
};
pub use runner::{Execution, Runner, RunnerError};

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
