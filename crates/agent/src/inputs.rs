//! The host's frames, read by a thread of their own, so that a client's
//! input reaches a program while the agent is busy supervising it.
//!
//! Requests go to the serve loop in order, as they come; the host's counts
//! of vCPU time ([`Frame::VcpuTime`]) go to [`crate::steal`]. [`Frame::Control`]
//! frames (input, end of input, signals, terminal size) go to the run stage
//! of the interactive execution under way: kept until that stage starts
//! (the client may type during a compile), then passed on as they come,
//! and dropped once the execution is over (they crossed its end on the
//! wire).
//!
//! The route opens here, in the reader, as an interactive [`Frame::Exec`]
//! is read, so that a control right behind it on the wire is kept even if
//! the serve loop has not taken the request up yet. Executions are numbered
//! in the order they are read (the serve loop counts them the same way),
//! and closing names the number: the late close of one execution cannot
//! shut the route of the next.

use std::fs::File;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use runner_protocol::{Control, Decoder, Frame, MAX_HOST_FRAME};

use crate::event::Event;

/// What the serve loop gets from the host.
pub enum Incoming {
    Frame(Frame),
    /// The host hung up: the VM is about to be destroyed.
    Closed,
    /// A frame that does not decode; nothing after it can be trusted.
    Bad(String),
}

/// Where [`Frame::Control`] frames go.
#[derive(Clone, Default)]
pub struct Inputs(Arc<Mutex<Route>>);

#[derive(Default)]
struct Route {
    /// The number of the interactive execution under way.
    open: Option<u64>,
    /// Its run stage, once it runs.
    stage: Option<Sender<Event>>,
    /// What came before that.
    pending: Vec<Control>,
}

impl Inputs {
    /// Interactive execution `number` was read: controls are kept for its
    /// run stage.
    fn open(&self, number: u64) {
        *self.0.lock().unwrap() = Route {
            open: Some(number),
            ..Route::default()
        };
    }

    /// Its run stage runs: what was kept goes to `stage` now, and the rest
    /// as it comes.
    pub fn attach(&self, stage: Sender<Event>) {
        let mut route = self.0.lock().unwrap();
        if route.open.is_none() {
            return;
        }
        for control in route.pending.drain(..) {
            let _ = stage.send(Event::Control(control));
        }
        route.stage = Some(stage);
    }

    /// Execution `number` is over: controls that still come for it are
    /// dropped. A route already opened for a later execution stays.
    pub fn close(&self, number: u64) {
        let mut route = self.0.lock().unwrap();
        if route.open == Some(number) {
            *route = Route::default();
        }
    }

    fn route(&self, control: Control) {
        let mut route = self.0.lock().unwrap();
        if route.open.is_none() {
            return;
        }
        match &route.stage {
            Some(stage) => {
                let _ = stage.send(Event::Control(control));
            }
            None => route.pending.push(control),
        }
    }
}

/// Reads frames from `port` until the host hangs up: controls to `inputs`,
/// the rest to the returned receiver. [`Frame::Exec`] frames are numbered
/// from 0 in the order read; the serve loop counts them alike.
pub fn read_frames(mut port: File, inputs: Inputs) -> Receiver<Incoming> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let decoder = Decoder::new(MAX_HOST_FRAME);
        let mut execs = 0u64;
        loop {
            let incoming = match decoder.read(&mut port) {
                Ok(Some(Frame::Control(control))) => {
                    inputs.route(control);
                    continue;
                }
                Ok(Some(Frame::VcpuTime(time))) => {
                    crate::steal::record(time);
                    continue;
                }
                Ok(Some(Frame::Wake(wake))) => {
                    crate::steal::reset();
                    Incoming::Frame(Frame::Wake(wake))
                }
                Ok(Some(Frame::Exec(request))) => {
                    if request.interactive.is_some() {
                        inputs.open(execs);
                    }
                    execs += 1;
                    Incoming::Frame(Frame::Exec(request))
                }
                Ok(Some(frame)) => Incoming::Frame(frame),
                // In gVisor nothing else ends the sandbox when its runner
                // is gone (a VM's QEMU dies with it): the agent ends it
                // now, whatever stage runs.
                Ok(None) if crate::platform::current() == crate::platform::Platform::Gvisor => {
                    std::process::exit(0)
                }
                Ok(None) => Incoming::Closed,
                Err(e) => Incoming::Bad(e.to_string()),
            };
            let last = !matches!(incoming, Incoming::Frame(_));
            if tx.send(incoming).is_err() || last {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(data: &[u8]) -> Control {
        Control::Input {
            data: data.to_vec(),
        }
    }

    fn controls(rx: &Receiver<Event>) -> Vec<Control> {
        rx.try_iter()
            .filter_map(|e| match e {
                Event::Control(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn controls_wait_for_the_run_stage_and_stop_with_the_execution() {
        let inputs = Inputs::default();
        // None belongs to an execution that is not interactive.
        inputs.route(input(b"stray"));
        inputs.open(0);
        inputs.route(input(b"early"));
        let (tx, rx) = mpsc::channel();
        inputs.attach(tx);
        inputs.route(input(b"later"));
        assert_eq!(controls(&rx), [input(b"early"), input(b"later")]);
        inputs.close(0);
        inputs.route(input(b"late"));
        assert!(controls(&rx).is_empty());
    }

    #[test]
    fn a_late_close_leaves_the_next_execution_its_controls() {
        let inputs = Inputs::default();
        inputs.open(0);
        // The reader takes up execution 1, and a kill right behind it,
        // before the serve loop has closed execution 0.
        inputs.open(1);
        inputs.route(Control::Signal {
            signal: runner_protocol::SignalKind::Kill,
        });
        inputs.close(0);
        let (tx, rx) = mpsc::channel();
        inputs.attach(tx);
        assert_eq!(
            controls(&rx),
            [Control::Signal {
                signal: runner_protocol::SignalKind::Kill
            }]
        );
        inputs.close(1);
        inputs.route(input(b"late"));
        assert!(controls(&rx).is_empty());
    }
}
