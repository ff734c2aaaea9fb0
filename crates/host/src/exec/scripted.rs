//! A scripted agent peer, for unit tests of the host's side of the
//! conversation: the far end of a socket pair that speaks the real protocol
//! (frames made by `runner_protocol`), played by a test to do what a VM
//! rarely does: stay silent, send a malformed or oversized frame, report a
//! stage twice, hang up, or flood. It stands in for the guest's agent only;
//! every test that claims end-to-end behaviour boots a real VM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use runner_protocol::{Decoder, Frame, HEADER_LEN, Hello, MAX_HOST_FRAME, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vmm::{AgentChannel, Vm, VmmError};

/// The host's end: a VM whose agent is the [`Peer`].
pub(crate) struct ScriptedVm {
    channel: AgentChannel,
    destroyed: Arc<AtomicBool>,
}

/// The guest's end, driven by the test.
pub(crate) struct Peer {
    stream: UnixStream,
}

/// A connected pair, and a flag that says whether the host destroyed the VM.
pub(crate) fn pair() -> (ScriptedVm, Peer, Arc<AtomicBool>) {
    let (host, guest) = UnixStream::pair().expect("a socket pair");
    let destroyed = Arc::new(AtomicBool::new(false));
    let vm = ScriptedVm {
        channel: AgentChannel::new(host),
        destroyed: destroyed.clone(),
    };
    (vm, Peer { stream: guest }, destroyed)
}

#[async_trait]
impl Vm for ScriptedVm {
    fn channel(&mut self) -> &mut AgentChannel {
        &mut self.channel
    }

    fn console_tail(&self) -> String {
        "(scripted guest)".into()
    }

    async fn snapshot(&mut self, _state: &std::path::Path) -> Result<(), VmmError> {
        Err(VmmError::Unsupported("a scripted guest has no snapshot"))
    }

    async fn save(&mut self, _state: &std::path::Path) -> Result<crate::vmm::Saved, VmmError> {
        Err(VmmError::Unsupported("a scripted guest cannot be saved"))
    }

    async fn pause(&mut self, _paused: bool) -> Result<(), VmmError> {
        Ok(())
    }

    fn is_alive(&mut self) -> bool {
        true
    }

    async fn destroy(self: Box<Self>) {
        self.destroyed.store(true, Ordering::SeqCst);
    }
}

impl Peer {
    pub async fn send(&mut self, frame: &Frame) {
        let mut bytes = Vec::new();
        encode(frame, &mut bytes);
        self.send_raw(&bytes).await;
    }

    /// Bytes as they are, for frames the protocol would never make. A host
    /// that already hung up is not the test's failure.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn hello(&mut self) {
        self.send(&Frame::Hello(Hello {
            agent_version: "scripted".into(),
            uptime_ms: 1,
        }))
        .await;
    }

    /// The host's next frame; `None` once it hung up.
    pub async fn recv(&mut self) -> Option<Frame> {
        let decoder = Decoder::new(MAX_HOST_FRAME);
        let mut header = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut header).await.ok()?;
        let (kind, len) = decoder
            .header(&header)
            .expect("the host sends valid headers");
        let mut payload = vec![0; len as usize];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some(
            decoder
                .payload(kind, payload)
                .expect("the host sends valid frames"),
        )
    }

    /// Waits until the host closes its end, ignoring what it sends.
    pub async fn until_closed(mut self) {
        let mut sink = [0u8; 4096];
        while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}
