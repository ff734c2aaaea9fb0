//! Work the engine does ahead of requests, so that they find a VM ready:
//!
//! - [`snapshot`]: a language's snapshot made (a template VM booted,
//!   warmed, its runtime prestarted, saved into the store);
//! - [`pools`]: the warm pools tended (stale VMs recycled, pools that
//!   demand left shrunk, new VMs restored up to each pool's target).
//!
//! Both get their VMs from the engine's floor as any execution does.

pub(crate) mod pools;
pub(crate) mod snapshot;

pub use snapshot::SnapshotError;
