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
}

impl AgentChannel {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: Decoder::new(MAX_AGENT_FRAME),
            out: Vec::new(),
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
    pub async fn recv(&mut self) -> Result<Frame, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(&mut header).await?;
        let (kind, len) = self.decoder.header(&header)?;
        let mut payload = vec![0; len as usize];
        self.read_exact(&mut payload).await?;
        Ok(self.decoder.payload(kind, payload)?)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ChannelError> {
        match self.stream.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ChannelError::Closed),
            Err(e) => Err(ChannelError::Io(e)),
        }
    }
}
