//! The host↔guest protocol of Runner Codes.
//!
//! Every message is a frame: an 8-byte header followed by a payload.
//!
//! ```text
//! +------+------+---------+------+-------------------+
//! | 'R'  | 'C'  | version | kind | payload length    |
//! | u8   | u8   | u8      | u8   | u32 little-endian |
//! +------+------+---------+------+-------------------+
//! ```
//!
//! Control frames (hello, exec, stage end, error) carry JSON; output frames
//! carry the raw bytes the program wrote. A frame whose magic, version, kind or
//! length is wrong, or whose JSON does not parse, is rejected with a
//! [`ProtocolError`]; the decoder never panics on any input.
//!
//! The conversation is always the same: the agent sends [`Hello`] as soon as
//! it is ready, the host sends one [`ExecRequest`], the agent streams
//! [`Frame::Stdout`] / [`Frame::Stderr`] chunks and one [`Frame::StageEnd`] per
//! stage it ran, then the files the request asked to collect
//! ([`Frame::Collected`]), then [`Frame::Done`]. A VM serves exactly one
//! execution.
//!
//! A VM that is to be snapshotted first gets [`Frame::Warm`] (a warm-up run)
//! and [`Frame::Prestart`] (a runtime started and left waiting); a VM
//! restored from the snapshot gets [`Frame::Wake`] before its request.
//!
//! A session's VM is the exception to "exactly one": after its hello it
//! gets [`Frame::Session`], then any number of requests, one at a time, and
//! between them operations on its files ([`Frame::Files`]).

mod codec;
pub mod glob;
mod message;
pub mod net;

pub use codec::{Decoder, HEADER_LEN, MAGIC, ProtocolError, encode};
pub use message::{
    AgentFailure, COLLECTED_CHUNK, CollectedChunk, Control, ExecRequest, FILE_CHUNK, File,
    FileEntry, FileKind, FileOp, FileProblem, Frame, FrameKind, Hello, Interactive, Limits,
    OutputPiece, Outputs, PrestartSpec, SessionSpec, SignalKind, Stage, StageReport, StageSpec,
    VcpuTime, Wake, WindowSize,
};

/// Version of the frame format and messages. Host and agent must agree exactly.
pub const PROTOCOL_VERSION: u8 = 11;

/// Largest frame the host sends (an exec request carries the source files).
pub const MAX_HOST_FRAME: u32 = 16 << 20;

/// Largest frame the agent sends; the host refuses bigger ones, so that a
/// compromised guest cannot make the host allocate without bound.
pub const MAX_AGENT_FRAME: u32 = 256 << 10;

/// Name of the virtio-serial port the agent talks on.
pub const AGENT_PORT_NAME: &str = "runner.agent";

/// The argument that tells the agent it is the first process of a gVisor
/// sandbox rather than a VM's `/init`: its port to the host is its stdin
/// (a socket, both ways), the network port its stdout, its console its
/// stderr. `runsc restore` gives a restored sandbox new ones of the three.
pub const GVISOR_AGENT_ARG: &str = "--gvisor";

/// The guest's host name: set by the agent, and in the root filesystem's
/// `/etc/hostname` and `/etc/hosts`.
pub const GUEST_HOSTNAME: &str = "runner";
