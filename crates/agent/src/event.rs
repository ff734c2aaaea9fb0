//! What a stage's supervisor waits for: its output, its end, and what
//! the client of an interactive execution sends meanwhile.

use std::process::ExitStatus;
use std::time::Instant;

use runner_protocol::Control;

/// What a stage's supervisor waits for.
pub enum Event {
    Output {
        stderr: bool,
        bytes: Vec<u8>,
    },
    Closed,
    /// The main process ended: how, when, and its peak resident memory in
    /// bytes.
    Exited(ExitStatus, Instant, u64),
    /// From the client of an interactive execution, passed on by the
    /// thread that reads the host's frames.
    Control(Control),
}
