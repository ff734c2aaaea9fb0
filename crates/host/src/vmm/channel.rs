//! The host end of the agent connection: frames over a byte stream.

use runner_protocol::{Decoder, Frame, HEADER_LEN, MAX_AGENT_FRAME, ProtocolError, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the agent closed the connection")]
    Closed,
    #[error("agent connection")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

pub struct AgentChannel {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
    /// Bytes read and not yet a whole frame.
    input: Vec<u8>,
}

/// Bytes asked of the stream at a time.
const READ_CHUNK: usize = 64 << 10;

impl AgentChannel {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: Decoder::new(MAX_AGENT_FRAME),
            out: Vec::new(),
            input: Vec::new(),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ChannelError> {
        self.out.clear();
        encode(frame, &mut self.out);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(ChannelError::Io)
    }

    /// The next frame from the agent. Frames over [`MAX_AGENT_FRAME`] are
    /// refused before their payload is read.
    ///
    /// Cancel-safe: what was read of a frame stays for the next call, so
    /// that a caller may wait for a frame and for something else at once.
    pub async fn recv(&mut self) -> Result<Frame, ChannelError> {
        loop {
            if let Some(header) = self.input.first_chunk::<HEADER_LEN>() {
                let (kind, len) = self.decoder.header(header)?;
                let end = HEADER_LEN + len as usize;
                if self.input.len() >= end {
                    let payload = self.input[HEADER_LEN..end].to_vec();
                    self.input.drain(..end);
                    return Ok(self.decoder.payload(kind, payload)?);
                }
            }
            self.input.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
    }
}
