//! Files back from a run: the caps on them, the checking of what the agent
//! sends (a guest may lie), and the result's entries.
//!
//! A request names `outputs`, paths or patterns under the working
//! directory (see [`runner_protocol::glob`]); after the run stage, however
//! it ended, the agent sends the matching regular files in path order. A
//! file over [`FILE_BYTES`], or past [`TOTAL_BYTES`] in all, comes as an
//! entry with its size and `truncated: true` and no content; past
//! [`MAX_FILES`] files the rest are left out. None of this is an error.

use runner_protocol::{OutputPiece, Outputs, glob};

use super::conversation::ConversationError;

/// The most bytes of one output file sent back.
pub const FILE_BYTES: u64 = 8 << 20;
/// The most bytes of all output files together.
pub const TOTAL_BYTES: u64 = 16 << 20;
/// The most output files of one run.
pub const MAX_FILES: u32 = 100;
/// The most patterns one request may name.
pub const MAX_PATTERNS: usize = 32;

/// What the agent is asked for, for `patterns` (checked by the plan).
pub fn spec(patterns: Vec<String>) -> Outputs {
    Outputs {
        patterns,
        file_bytes: FILE_BYTES,
        total_bytes: TOTAL_BYTES,
        max_files: MAX_FILES,
    }
}

/// A file back from a run, as the result shows it.
pub use runner_wire::OutputFile;

/// Output files as their pieces come, checked against what was asked.
#[derive(Debug, Default)]
pub struct Received {
    pub files: Vec<OutputFile>,
    /// The file whose pieces are coming, if one is.
    partial: Option<OutputFile>,
    bytes: u64,
}

impl Received {
    pub fn add(
        &mut self,
        piece: OutputPiece,
        asked: Option<&Outputs>,
    ) -> Result<(), ConversationError> {
        let bad = |why: String| Err(ConversationError::Outputs(why));
        let Some(asked) = asked else {
            return bad(format!("{:?}, when none were asked for", piece.path));
        };
        let clean = !piece.path.is_empty()
            && !piece.path.starts_with('/')
            && piece
                .path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean || !asked.patterns.iter().any(|p| glob::matches(p, &piece.path)) {
            return bad(format!("{:?}, which no pattern names", piece.path));
        }
        let file = match self.partial.take() {
            Some(file) if file.path == piece.path => file,
            Some(file) => {
                return bad(format!(
                    "{:?} before the end of {:?}",
                    piece.path, file.path
                ));
            }
            None if self.files.iter().any(|f| f.path == piece.path) => {
                return bad(format!("{:?} twice", piece.path));
            }
            None if self.files.len() >= asked.max_files as usize => {
                return bad(format!("more than {} files", asked.max_files));
            }
            None => OutputFile {
                media_type: media_type(&piece.path).to_string(),
                path: piece.path.clone(),
                size: piece.size,
                encoding: "base64".to_string(),
                content: Vec::new(),
                truncated: piece.truncated,
            },
        };
        if piece.offset != file.content.len() as u64 || piece.size != file.size {
            return bad(format!(
                "{:?} at offset {} of {} bytes",
                piece.path, piece.offset, piece.size
            ));
        }
        if file.truncated && !(piece.last && piece.content.is_empty()) {
            return bad(format!("{:?}: a listed file with content", piece.path));
        }
        let mut file = file;
        file.content.extend_from_slice(&piece.content);
        self.bytes += piece.content.len() as u64;
        if file.content.len() as u64 > asked.file_bytes.min(file.size)
            || self.bytes > asked.total_bytes
        {
            return bad(format!("{:?} past its caps", piece.path));
        }
        if piece.last {
            if !file.truncated && file.content.len() as u64 != file.size {
                return bad(format!("{:?} ended short of its size", piece.path));
            }
            self.files.push(file);
        } else {
            self.partial = Some(file);
        }
        Ok(())
    }

    /// At the end: no file left unfinished.
    pub fn finish(&self) -> Result<(), ConversationError> {
        match &self.partial {
            Some(file) => Err(ConversationError::Outputs(format!(
                "{:?} without its last piece",
                file.path
            ))),
            None => Ok(()),
        }
    }
}

/// The media type a file name suggests; `application/octet-stream` when
/// it suggests none.
pub fn media_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "txt" | "log" | "md" => "text/plain",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "parquet" => "application/vnd.apache.parquet",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(path: &str, size: u64, offset: u64, content: &[u8], last: bool) -> OutputPiece {
        OutputPiece {
            path: path.into(),
            size,
            offset,
            content: content.to_vec(),
            last,
            truncated: false,
        }
    }

    fn asked() -> Outputs {
        Outputs {
            patterns: vec!["*.csv".into(), "plots/**".into()],
            file_bytes: 10,
            total_bytes: 15,
            max_files: 3,
        }
    }

    #[test]
    fn files_come_whole_in_order_and_within_their_caps() {
        let asked = asked();
        let mut received = Received::default();
        received
            .add(piece("a.csv", 6, 0, b"1,", false), Some(&asked))
            .unwrap();
        received
            .add(piece("a.csv", 6, 2, b"2\n3\n", true), Some(&asked))
            .unwrap();
        let listed = OutputPiece {
            truncated: true,
            ..piece("plots/big.png", 1 << 20, 0, b"", true)
        };
        received.add(listed, Some(&asked)).unwrap();
        received.finish().unwrap();
        assert_eq!(received.files.len(), 2);
        assert_eq!(received.files[0].content, b"1,2\n3\n");
        assert_eq!(received.files[0].media_type, "text/csv");
        assert!(received.files[1].truncated);
        assert_eq!(received.files[1].size, 1 << 20);
    }

    #[test]
    fn a_guest_that_sends_what_was_not_asked_is_refused() {
        let asked = asked();
        let refused = |pieces: Vec<OutputPiece>, asked: Option<&Outputs>| {
            let mut received = Received::default();
            pieces
                .into_iter()
                .map(|p| received.add(p, asked))
                .collect::<Result<Vec<()>, _>>()
                .and_then(|_| received.finish())
                .is_err()
        };
        for pieces in [
            vec![piece("../etc/shadow", 1, 0, b"x", true)],
            vec![piece("/etc/shadow", 1, 0, b"x", true)],
            vec![piece("notes.txt", 1, 0, b"x", true)],
            vec![
                piece("a.csv", 1, 0, b"x", true),
                piece("a.csv", 1, 0, b"x", true),
            ],
            vec![
                piece("a.csv", 2, 0, b"x", false),
                piece("b.csv", 1, 0, b"y", true),
            ],
            vec![piece("a.csv", 2, 1, b"x", true)],
            vec![piece("a.csv", 3, 0, b"x", true)],
            vec![piece("a.csv", 11, 0, &[b'x'; 11], true)],
            vec![
                piece("a.csv", 8, 0, &[b'x'; 8], true),
                piece("b.csv", 8, 0, &[b'y'; 8], true),
            ],
            vec![piece("a.csv", 2, 0, b"x", false)],
            vec![OutputPiece {
                truncated: true,
                ..piece("a.csv", 99, 0, b"x", true)
            }],
            vec![
                piece("a.csv", 0, 0, b"", true),
                piece("b.csv", 0, 0, b"", true),
                piece("c.csv", 0, 0, b"", true),
                piece("d.csv", 0, 0, b"", true),
            ],
        ] {
            assert!(refused(pieces.clone(), Some(&asked)), "{pieces:?}");
        }
        assert!(refused(vec![piece("a.csv", 1, 0, b"x", true)], None));
    }

    #[test]
    fn media_types_follow_the_extension() {
        assert_eq!(media_type("plots/fig.PNG"), "image/png");
        assert_eq!(media_type("data.csv"), "text/csv");
        assert_eq!(media_type("Makefile"), "application/octet-stream");
    }
}
