//! What a VMM (and its guest) or a sandbox printed: the last words kept
//! for error reports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of console output kept for error reports.
const CONSOLE_KEEP: usize = 16 << 10;

/// The last [`CONSOLE_KEEP`] bytes QEMU and the guest printed.
#[derive(Clone, Default)]
pub(super) struct Console {
    tail: Arc<Mutex<VecDeque<u8>>>,
    readers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Console {
    pub(super) fn capture(&self, pipe: Option<impl AsyncRead + Unpin + Send + 'static>) {
        let Some(mut pipe) = pipe else { return };
        let tail = self.tail.clone();
        let handle = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut tail = tail.lock().unwrap();
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(CONSOLE_KEEP);
                tail.drain(..excess);
            }
        });
        self.readers.lock().unwrap().push(handle);
    }

    pub(super) fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// After the process exited: let the readers take in its last words.
    pub(super) async fn settle_and_tail(&self) -> String {
        let readers: Vec<_> = self.readers.lock().unwrap().drain(..).collect();
        for reader in readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        self.tail()
    }
}
