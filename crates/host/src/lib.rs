//! The Runner Codes host library.
//!
//! - [`lang`]: the languages, as data;
//! - [`image`]: guest kernel, initramfs and root filesystems, built from
//!   Debian packages and cached by content;
//! - [`vmm`]: virtual machine monitors behind one trait (QEMU today);
//! - [`snapshot`]: VMs saved ready to run, restored instead of booted;
//! - [`pool`]: warm pools of restored VMs waiting for requests;
//! - [`exec`]: one execution, from request to result, in a fresh VM;
//! - [`state`]: where all of it lives on the host;
//! - [`machine`]: facts about the host (its memory, its CPU).

pub mod exec;
pub mod image;
pub mod lang;
pub mod machine;
pub mod pool;
pub mod snapshot;
pub mod state;
pub mod vmm;

pub use exec::{
    ExecError, ExecutionRequest, ExecutionResult, LimitPolicy, OutputChunk, Runner, Status,
};
