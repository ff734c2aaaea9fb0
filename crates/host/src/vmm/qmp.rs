//! A QEMU Machine Protocol client: just what snapshots need.
//!
//! QMP is JSON lines: a greeting, then `{"execute": ...}` answered by
//! `{"return": ...}` or `{"error": ...}`, with `{"event": ...}` lines in
//! between that we skip.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP sent something that is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP {command}: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Failed(String),
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Reads the greeting and leaves capabilities negotiation mode.
    pub async fn handshake(stream: UnixStream) -> Result<Self, QmpError> {
        let (reader, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(reader),
            writer,
        };
        qmp.read().await?;
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` (`Null` for none) and returns what it
    /// returned.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let mut reply = self.read().await?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.into(),
                    message: error["desc"].as_str().unwrap_or("unknown error").into(),
                });
            }
            // An event or the greeting: not our answer.
        }
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }
}
