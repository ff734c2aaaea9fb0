//! The real-VM tests: one test binary, a module per feature, the fixtures
//! they share in [`common`]. Every test here runs the real `runner`
//! binary, which boots or restores real VMs (under KVM where it works,
//! else TCG); none stands a mock in for a VM.
//!
//! A test that cannot run on this machine is ignored with its reason
//! (`cargo test -- --ignored` runs it where it can). Two tests run at a
//! time; one that needs the machine to itself says so
//! ([`common::alone`]).

mod common;

mod api;
mod bench;
mod compat;
mod faults;
mod hostile;
mod images;
mod interactive;
mod judge;
mod kernels;
mod languages;
mod limits;
mod load;
mod network;
mod run;
mod sessions;
mod snapshots;
