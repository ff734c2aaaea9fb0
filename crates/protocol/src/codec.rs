//! Encoding and decoding of frames.

use std::io::{self, Read};

use crate::PROTOCOL_VERSION;
use crate::message::{Frame, FrameKind};

pub const MAGIC: [u8; 2] = *b"RC";
pub const HEADER_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad frame magic {0:02x?}: the peer does not speak the Runner Codes protocol")]
    BadMagic([u8; 2]),
    #[error("protocol version {got} is not {expected}: host and agent are from different builds")]
    Version { got: u8, expected: u8 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("{kind:?} frame must be empty, has {len} bytes")]
    UnexpectedPayload { kind: FrameKind, len: usize },
    #[error("malformed {kind:?} frame")]
    Json {
        kind: FrameKind,
        #[source]
        source: serde_json::Error,
    },
    #[error("a network frame that is not data must be empty, has {len} bytes")]
    UnexpectedNetPayload { len: u32 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("reading a frame")]
    Io(#[source] io::Error),
}

/// Appends the encoded `frame` to `out`.
///
/// # Panics
/// If a JSON payload cannot be serialised, which the message types rule out.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(frame.kind() as u8);
    out.extend_from_slice(&[0; 4]);
    fn json<T: serde::Serialize>(out: &mut Vec<u8>, message: &T) {
        serde_json::to_writer(out, message).expect("protocol messages always serialise");
    }
    match frame {
        Frame::Hello(m) => json(out, m),
        Frame::Exec(m) | Frame::Warm(m) => json(out, m),
        Frame::Wake(m) => json(out, m),
        Frame::Prestart(m) => json(out, m),
        Frame::Collected(m) => json(out, m),
        Frame::Session(m) => json(out, m),
        Frame::Files(m) => json(out, m),
        Frame::Listing(m) => json(out, m),
        Frame::Control(m) => json(out, m),
        Frame::OutputFile(m) => json(out, m),
        Frame::VcpuTime(m) => json(out, m),
        Frame::StageEnd(m) => json(out, m),
        Frame::Error(m) => json(out, m),
        Frame::Stdout(bytes) | Frame::Stderr(bytes) => out.extend_from_slice(bytes),
        Frame::Done => {}
    }
    let len = u32::try_from(out.len() - start - HEADER_LEN).expect("frame over 4 GiB");
    out[start + 4..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Decodes frames, refusing any whose payload is over `max_len` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_len: u32,
}

impl Decoder {
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }

    /// Validates a header and returns the frame kind and payload length.
    pub fn header(&self, header: &[u8; HEADER_LEN]) -> Result<(FrameKind, u32), ProtocolError> {
        let magic = [header[0], header[1]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        if header[2] != PROTOCOL_VERSION {
            return Err(ProtocolError::Version {
                got: header[2],
                expected: PROTOCOL_VERSION,
            });
        }
        let kind = FrameKind::from_u8(header[3]).ok_or(ProtocolError::UnknownKind(header[3]))?;
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > self.max_len {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok((kind, len))
    }

    /// Builds a frame from its kind and payload.
    pub fn payload(&self, kind: FrameKind, payload: Vec<u8>) -> Result<Frame, ProtocolError> {
        fn json<T: serde::de::DeserializeOwned>(
            kind: FrameKind,
            payload: &[u8],
        ) -> Result<T, ProtocolError> {
            serde_json::from_slice(payload).map_err(|source| ProtocolError::Json { kind, source })
        }
        Ok(match kind {
            FrameKind::Hello => Frame::Hello(json(kind, &payload)?),
            FrameKind::Exec => Frame::Exec(json(kind, &payload)?),
            FrameKind::Warm => Frame::Warm(json(kind, &payload)?),
            FrameKind::Prestart => Frame::Prestart(json(kind, &payload)?),
            FrameKind::Collected => Frame::Collected(json(kind, &payload)?),
            FrameKind::Session => Frame::Session(json(kind, &payload)?),
            FrameKind::Files => Frame::Files(json(kind, &payload)?),
            FrameKind::Listing => Frame::Listing(json(kind, &payload)?),
            FrameKind::Control => Frame::Control(json(kind, &payload)?),
            FrameKind::OutputFile => Frame::OutputFile(json(kind, &payload)?),
            FrameKind::VcpuTime => Frame::VcpuTime(json(kind, &payload)?),
            FrameKind::Wake => Frame::Wake(json(kind, &payload)?),
            FrameKind::StageEnd => Frame::StageEnd(json(kind, &payload)?),
            FrameKind::Error => Frame::Error(json(kind, &payload)?),
            FrameKind::Stdout => Frame::Stdout(payload),
            FrameKind::Stderr => Frame::Stderr(payload),
            FrameKind::Done if payload.is_empty() => Frame::Done,
            FrameKind::Done => {
                return Err(ProtocolError::UnexpectedPayload {
                    kind,
                    len: payload.len(),
                });
            }
        })
    }

    /// Decodes the first frame of `buf`. Returns the frame and the bytes it
    /// used, or `None` if `buf` does not hold a whole frame yet.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = self.header(header)?;
        let end = HEADER_LEN + len as usize;
        let Some(payload) = buf.get(HEADER_LEN..end) else {
            return Ok(None);
        };
        Ok(Some((self.payload(kind, payload.to_vec())?, end)))
    }

    /// Reads one frame from a blocking reader. `Ok(None)` on a clean end of
    /// stream before the first header byte.
    pub fn read<R: Read>(&self, reader: &mut R) -> Result<Option<Frame>, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match reader.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(ProtocolError::Truncated),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::Io(e)),
            }
        }
        let (kind, len) = self.header(&header)?;
        let mut payload = vec![0; len as usize];
        reader
            .read_exact(&mut payload)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
                _ => ProtocolError::Io(e),
            })?;
        self.payload(kind, payload).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::message::*;

    fn roundtrip(frame: Frame) {
        let mut buf = Vec::new();
        encode(&frame, &mut buf);
        let (decoded, used) = Decoder::new(u32::MAX).decode(&buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert_eq!(used, buf.len());
        let mut reader = &buf[..];
        assert_eq!(
            Decoder::new(u32::MAX).read(&mut reader).unwrap(),
            Some(frame)
        );
        assert!(Decoder::new(u32::MAX).read(&mut reader).unwrap().is_none());
    }

    fn exec() -> ExecRequest {
        ExecRequest {
            language: "python".into(),
            files: vec![File {
                name: "main.py".into(),
                content: b"print(1)\n\xff".to_vec(),
                executable: false,
            }],
            stages: vec![StageSpec {
                stage: Stage::Run,
                argv: vec!["python3".into(), "main.py".into()],
                stdin: true,
                limits: Limits {
                    wall_time_ms: 1000,
                    cpu_time_ms: 1000,
                    memory_bytes: 256 << 20,
                    processes: 64,
                    output_bytes: 1 << 20,
                    file_size_bytes: 1 << 20,
                },
            }],
            stdin: vec![0, 1, 2, 255],
            env: BTreeMap::from([("A".into(), "b".into())]),
            collect: vec!["main".into(), "*.class".into()],
            collect_after: Some(Stage::Compile),
            interactive: Some(Interactive {
                pty: Some(WindowSize { rows: 24, cols: 80 }),
            }),
            outputs: Some(Outputs {
                patterns: vec!["**/*.png".into(), "out.csv".into()],
                file_bytes: 8 << 20,
                total_bytes: 16 << 20,
                max_files: 100,
            }),
            network: true,
        }
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(Frame::Hello(Hello {
            agent_version: "1.0".into(),
            uptime_ms: 12,
        }));
        roundtrip(Frame::Exec(exec()));
        roundtrip(Frame::Warm(exec()));
        roundtrip(Frame::Prestart(PrestartSpec {
            argv: vec!["python3".into(), "-c".into(), "pass".into()],
            replaces: vec!["python3".into(), "main.py".into()],
            env: BTreeMap::new(),
        }));
        roundtrip(Frame::Wake(Wake {
            entropy: vec![0, 1, 255],
            unix_time_ns: 1_795_000_000_000_000_000,
        }));
        roundtrip(Frame::Stdout(b"out".to_vec()));
        roundtrip(Frame::Stderr(vec![]));
        roundtrip(Frame::StageEnd(StageReport {
            exit_code: Some(3),
            ..StageReport::new(Stage::Compile)
        }));
        roundtrip(Frame::Collected(CollectedChunk {
            name: "main".into(),
            offset: 131_072,
            content: vec![0x7f, b'E', b'L', b'F'],
            executable: true,
            last: true,
        }));
        roundtrip(Frame::Session(SessionSpec {
            disk_bytes: 256 << 20,
        }));
        for op in file_ops() {
            roundtrip(Frame::Files(op));
        }
        roundtrip(Frame::Listing(listing()));
        for control in controls() {
            roundtrip(Frame::Control(control));
        }
        roundtrip(Frame::OutputFile(output_piece()));
        roundtrip(Frame::Done);
        roundtrip(Frame::Error(AgentFailure::new("no")));
        roundtrip(Frame::Error(AgentFailure {
            message: "x: no such file or directory".into(),
            file: Some(FileProblem::NotFound),
        }));
    }

    fn file_ops() -> Vec<FileOp> {
        vec![
            FileOp::Write {
                path: "data/input.csv".into(),
                offset: 0,
                content: b"a,b\n".to_vec(),
                executable: false,
            },
            FileOp::Read {
                path: "out.png".into(),
            },
            FileOp::List { path: "".into() },
            FileOp::Remove {
                path: "data".into(),
            },
        ]
    }

    fn listing() -> Vec<FileEntry> {
        vec![FileEntry {
            name: "main.py".into(),
            kind: FileKind::File,
            size: 12,
            mode: 0o644,
            modified_s: 1_795_000_000,
        }]
    }

    /// The fuzzer's seeds: one file of frames per kind of message, made
    /// from typed frames so that they follow the protocol as it is.
    fn fuzz_seeds() -> Vec<(&'static str, Vec<Frame>)> {
        vec![
            (
                "hello",
                vec![Frame::Hello(Hello {
                    agent_version: "0.1.0".into(),
                    uptime_ms: 1234,
                })],
            ),
            ("exec", vec![Frame::Exec(exec())]),
            (
                "stage_end",
                vec![Frame::StageEnd(StageReport {
                    exit_code: Some(0),
                    wall_time_us: 1500,
                    cpu_time_us: 900,
                    memory_peak_bytes: 1 << 20,
                    prestarted: true,
                    ..StageReport::new(Stage::Run)
                })],
            ),
            ("error", vec![Frame::Error(AgentFailure::new("no"))]),
            (
                "vcpu_time",
                vec![Frame::VcpuTime(VcpuTime {
                    running_us: 1_500_000,
                    waiting_us: 250_000,
                })],
            ),
            (
                "stdout",
                vec![
                    Frame::Stdout(b"hello\n".to_vec()),
                    Frame::Stderr(b"err".to_vec()),
                    Frame::Done,
                ],
            ),
            (
                "collected",
                vec![Frame::Collected(CollectedChunk {
                    name: "main".into(),
                    offset: 0,
                    content: b"\x7fELF".to_vec(),
                    executable: true,
                    last: true,
                })],
            ),
            (
                "session",
                vec![
                    Frame::Session(SessionSpec {
                        disk_bytes: 1 << 28,
                    }),
                    Frame::Listing(listing()),
                ],
            ),
            ("files", file_ops().into_iter().map(Frame::Files).collect()),
            (
                "control",
                controls().into_iter().map(Frame::Control).collect(),
            ),
            ("output_file", vec![Frame::OutputFile(output_piece())]),
        ]
    }

    fn output_piece() -> OutputPiece {
        OutputPiece {
            path: "plots/a.png".into(),
            size: 4,
            offset: 0,
            content: b"\x89PNG".to_vec(),
            last: true,
            truncated: false,
        }
    }

    fn controls() -> Vec<Control> {
        vec![
            Control::Input {
                data: b"1+1\n".to_vec(),
            },
            Control::InputEnd,
            Control::Signal {
                signal: SignalKind::Interrupt,
            },
            Control::Resize {
                size: WindowSize { rows: 24, cols: 80 },
            },
        ]
    }

    /// Seeds the decoder refuses (an old version, an old field name) would
    /// only exercise its error paths. `RUNNER_BLESS=1 cargo test -p
    /// runner-protocol` writes them anew after a protocol change.
    #[test]
    fn the_fuzz_seeds_are_frames_of_this_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/decode");
        for (name, frames) in fuzz_seeds() {
            let mut bytes = Vec::new();
            for frame in &frames {
                encode(frame, &mut bytes);
            }
            let path = dir.join(name);
            if std::env::var_os("RUNNER_BLESS").is_some() {
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(bytes),
                "{} is not what this protocol encodes: run RUNNER_BLESS=1 cargo test -p runner-protocol",
                path.display()
            );
        }
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = Vec::new();
        encode(&Frame::Stdout(b"hello".to_vec()), &mut buf);
        for cut in 0..buf.len() {
            assert!(Decoder::new(64).decode(&buf[..cut]).unwrap().is_none());
        }
        let mut reader = &buf[..buf.len() - 1];
        assert!(matches!(
            Decoder::new(64).read(&mut reader),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn bad_headers_are_rejected() {
        let mut buf = Vec::new();
        encode(&Frame::Stdout(vec![7; 100]), &mut buf);
        let decoder = Decoder::new(1 << 10);

        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(
            decoder.decode(&bad),
            Err(ProtocolError::BadMagic(_))
        ));

        let mut bad = buf.clone();
        bad[2] = PROTOCOL_VERSION + 1;
        assert!(matches!(
            decoder.decode(&bad),
            Err(ProtocolError::Version { .. })
        ));

        let mut bad = buf.clone();
        bad[3] = 200;
        assert!(matches!(
            decoder.decode(&bad),
            Err(ProtocolError::UnknownKind(200))
        ));

        // The length is checked from the header alone, before any payload is
        // buffered: an oversized frame fails fast.
        assert!(matches!(
            Decoder::new(99).decode(&buf[..HEADER_LEN]),
            Err(ProtocolError::TooLarge { len: 100, max: 99 })
        ));
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let decoder = Decoder::new(1 << 10);
        for kind in [
            FrameKind::Hello,
            FrameKind::Exec,
            FrameKind::StageEnd,
            FrameKind::Error,
        ] {
            let err = decoder.payload(kind, b"{not json".to_vec()).unwrap_err();
            assert!(matches!(err, ProtocolError::Json { .. }), "{err}");
        }
        // Unknown fields are refused: host and agent share one version.
        let err = decoder
            .payload(
                FrameKind::Hello,
                br#"{"agent_version":"1","uptime_ms":1,"x":1}"#.to_vec(),
            )
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Json { .. }));
        // Invalid base64 in a file is refused, not turned into garbage.
        let mut json = serde_json::to_value(exec()).unwrap();
        json["stdin"] = "***".into();
        let err = decoder
            .payload(FrameKind::Exec, serde_json::to_vec(&json).unwrap())
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Json { .. }));
        // A stage is one of the known ones, never a free string.
        let mut json = serde_json::to_value(exec()).unwrap();
        json["stages"][0]["stage"] = "rnu".into();
        let err = decoder
            .payload(FrameKind::Exec, serde_json::to_vec(&json).unwrap())
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Json { .. }));
        assert!(matches!(
            decoder.payload(FrameKind::Done, vec![1]),
            Err(ProtocolError::UnexpectedPayload { .. })
        ));
    }
}
