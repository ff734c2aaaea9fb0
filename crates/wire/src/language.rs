//! `GET /v1/languages`: the languages a server runs.

use serde::{Deserialize, Serialize};

/// A language a server runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanguageInfo {
    pub language: String,
    pub aliases: Vec<String>,
    /// The version in its image; `null` until the image is built.
    pub version: Option<String>,
    /// The entry point's name, e.g. `main.py`.
    pub source_file: String,
    pub compiled: bool,
    /// Its programs' memory unless a request asks.
    pub memory_mib: u32,
    /// The least a request may ask for.
    pub min_memory_mib: u32,
    /// Its image is built.
    pub ready: bool,
}
