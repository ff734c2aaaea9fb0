//! Files back from a run: the regular files of the working directory that
//! match the request's output patterns, sent to the host after the run
//! stage, in path order, within the request's caps.
//!
//! The run user owns the working directory and may have left links there
//! to files only root can read; the agent runs as root. So the tree is
//! walked without following links, and each file is opened beneath the
//! working directory refusing links at every step (see
//! [`crate::files::open_beneath`]), then checked to be a regular file on
//! the descriptor it read from. The working directory is a tmpfs of its
//! own, so no hard link can reach a file elsewhere.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use runner_protocol::{COLLECTED_CHUNK, Frame, OutputPiece, Outputs, glob};

use crate::consts::WORK_DIR;
use crate::error::{AgentError, Context};
use crate::port::Port;

/// Directories deeper than this are not looked into.
const MAX_DEPTH: usize = 32;
/// Entries looked at, at most: a tree of millions of files is not walked.
const MAX_ENTRIES: usize = 100_000;

/// Sends the files `outputs` names.
pub fn send(outputs: &Outputs, out: &mut Port) -> Result<(), AgentError> {
    let mut paths = Vec::new();
    let mut seen = 0;
    walk(Path::new(WORK_DIR), "", 0, &mut seen, &mut paths);
    paths.retain(|path| outputs.patterns.iter().any(|p| glob::matches(p, path)));
    paths.sort();
    paths.truncate(outputs.max_files as usize);
    let dir = crate::files::work_dir()?;
    let mut budget = outputs.total_bytes;
    for path in paths {
        let fd = match crate::files::open_beneath(&dir, &path, OFlag::O_RDONLY, Mode::empty()) {
            Ok(fd) => fd,
            // Gone, or a link put in place of what the walk saw.
            Err(_) => continue,
        };
        let mut file = File::from(fd);
        let meta = file.metadata().context(|| format!("stat output {path}"))?;
        if !meta.is_file() {
            continue;
        }
        let size = meta.len();
        if size > outputs.file_bytes || size > budget {
            out.send(&Frame::OutputFile(OutputPiece {
                path,
                size,
                offset: 0,
                content: Vec::new(),
                last: true,
                truncated: true,
            }))?;
            continue;
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut file)
            .take(size)
            .read_to_end(&mut content)
            .context(|| format!("read output {path}"))?;
        budget -= content.len() as u64;
        let size = content.len() as u64;
        let mut offset = 0;
        let mut pieces = content.chunks(COLLECTED_CHUNK).peekable();
        if pieces.peek().is_none() {
            out.send(&Frame::OutputFile(OutputPiece {
                path: path.clone(),
                size,
                offset: 0,
                content: Vec::new(),
                last: true,
                truncated: false,
            }))?;
        }
        while let Some(piece) = pieces.next() {
            out.send(&Frame::OutputFile(OutputPiece {
                path: path.clone(),
                size,
                offset,
                content: piece.to_vec(),
                last: pieces.peek().is_none(),
                truncated: false,
            }))?;
            offset += piece.len() as u64;
        }
    }
    Ok(())
}

/// Adds the regular files under `dir` (as `prefix/name`) to `paths`,
/// without following links.
fn walk(dir: &Path, prefix: &str, depth: usize, seen: &mut usize, paths: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        // The entry's own type: a link is neither a file nor a directory.
        match entry.file_type() {
            Ok(kind) if kind.is_file() => paths.push(path),
            Ok(kind) if kind.is_dir() && depth < MAX_DEPTH => {
                walk(&dir.join(&name), &path, depth + 1, seen, paths)
            }
            _ => {}
        }
    }
}
