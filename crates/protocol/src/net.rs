//! The network port: the guest's only way out, when an execution may have
//! one.
//!
//! A VM has no network device. The agent listens on the guest's loopback at
//! [`PROXY_PORT`] and carries every connection made to it, byte for byte,
//! over a second virtio-serial port ([`NET_PORT_NAME`]) to the host, where
//! an HTTP proxy decides what each may reach. The agent understands nothing
//! of what it carries: every decision is the host's.
//!
//! The port carries [`NetFrame`]s, one connection's each:
//!
//! ```text
//! +------------------+------+-------------------+---------+
//! | connection       | kind | payload length    | payload |
//! | u32 little-endian| u8   | u32 little-endian |         |
//! +------------------+------+-------------------+---------+
//! ```
//!
//! The agent opens a connection ([`NetKind::Open`], a number it has not
//! used), either side sends its bytes ([`NetKind::Data`]) and either side
//! ends it ([`NetKind::Close`]); a connection ended by one side is over
//! for both.

use crate::ProtocolError;

/// Name of the virtio-serial port connections are carried on.
pub const NET_PORT_NAME: &str = "runner.net";

/// The port on the guest's loopback (127.0.0.1) the agent's end of the
/// proxy listens on: programs get `http_proxy=http://127.0.0.1:3128`.
pub const PROXY_PORT: u16 = 3128;

/// Largest payload of a [`NetFrame`].
pub const MAX_NET_PAYLOAD: u32 = 64 << 10;

/// Bytes before a [`NetFrame`]'s payload.
pub const NET_HEADER_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NetKind {
    /// A program connected to the proxy (agent to host only); no payload.
    Open = 1,
    /// Bytes of the connection, in order.
    Data = 2,
    /// The connection is over; no payload.
    Close = 3,
}

impl NetKind {
    fn from_u8(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Open,
            2 => Self::Data,
            3 => Self::Close,
            _ => return None,
        })
    }
}

/// One frame of the network port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFrame {
    pub connection: u32,
    pub kind: NetKind,
    pub data: Vec<u8>,
}

impl NetFrame {
    pub fn open(connection: u32) -> Self {
        Self {
            connection,
            kind: NetKind::Open,
            data: Vec::new(),
        }
    }

    pub fn data(connection: u32, data: Vec<u8>) -> Self {
        Self {
            connection,
            kind: NetKind::Data,
            data,
        }
    }

    pub fn close(connection: u32) -> Self {
        Self {
            connection,
            kind: NetKind::Close,
            data: Vec::new(),
        }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// # Panics
    /// If the payload is over [`MAX_NET_PAYLOAD`]: split it first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.data.len())
            .ok()
            .filter(|len| *len <= MAX_NET_PAYLOAD)
            .expect("a network frame's payload fits MAX_NET_PAYLOAD");
        out.extend_from_slice(&self.connection.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.data);
    }

    /// Checks a header: the connection, kind and payload length it gives.
    pub fn header(header: &[u8; NET_HEADER_LEN]) -> Result<(u32, NetKind, u32), ProtocolError> {
        let connection = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let kind = NetKind::from_u8(header[4]).ok_or(ProtocolError::UnknownKind(header[4]))?;
        let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        if len > MAX_NET_PAYLOAD {
            return Err(ProtocolError::TooLarge {
                len,
                max: MAX_NET_PAYLOAD,
            });
        }
        if kind != NetKind::Data && len != 0 {
            return Err(ProtocolError::UnexpectedNetPayload { len });
        }
        Ok((connection, kind, len))
    }

    /// Reads one frame from `reader`; `Ok(None)` at the end of the stream
    /// between frames.
    pub fn read(reader: &mut impl std::io::Read) -> Result<Option<Self>, ProtocolError> {
        let mut header = [0u8; NET_HEADER_LEN];
        match read_full(reader, &mut header)? {
            0 => return Ok(None),
            NET_HEADER_LEN => {}
            _ => return Err(ProtocolError::Truncated),
        }
        let (connection, kind, len) = Self::header(&header)?;
        let mut data = vec![0; len as usize];
        if read_full(reader, &mut data)? != data.len() {
            return Err(ProtocolError::Truncated);
        }
        Ok(Some(Self {
            connection,
            kind,
            data,
        }))
    }
}

/// Reads until `buf` is full or the stream ends; how much it read.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frames: &[NetFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode(&mut out);
        }
        out
    }

    #[test]
    fn frames_read_back_as_written() {
        let frames = [
            NetFrame::open(7),
            NetFrame::data(7, b"CONNECT a.test:443 HTTP/1.1\r\n\r\n".to_vec()),
            NetFrame::data(7, vec![0; MAX_NET_PAYLOAD as usize]),
            NetFrame::close(7),
        ];
        let bytes = encoded(&frames);
        let mut reader = &bytes[..];
        for frame in &frames {
            assert_eq!(NetFrame::read(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert_eq!(NetFrame::read(&mut reader).unwrap(), None);
    }

    #[test]
    fn a_bad_header_or_a_cut_frame_is_refused() {
        let mut big = encoded(&[NetFrame::data(1, vec![1; 4])]);
        big[5..9].copy_from_slice(&(MAX_NET_PAYLOAD + 1).to_le_bytes());
        let mut unknown = encoded(&[NetFrame::close(1)]);
        unknown[4] = 9;
        let mut open_with_payload = encoded(&[NetFrame::data(1, vec![1; 4])]);
        open_with_payload[4] = NetKind::Open as u8;
        let cut = encoded(&[NetFrame::data(1, vec![1; 4])]);
        for (name, bytes, expected) in [
            ("too large", &big[..], "over the limit"),
            ("unknown kind", &unknown[..], "unknown frame kind 9"),
            ("open with bytes", &open_with_payload[..], "must be empty"),
            ("cut payload", &cut[..cut.len() - 1], "middle of a frame"),
            ("cut header", &cut[..4], "middle of a frame"),
        ] {
            let error = NetFrame::read(&mut &bytes[..]).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }
}
