//! The languages Runner Codes runs, loaded from the TOML files under
//! `languages/` that are embedded at build time, and from the operator's
//! own directory of such files (`languages_dir`), read at start-up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

include!(concat!(env!("OUT_DIR"), "/languages.rs"));

#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    #[error("unknown language {name:?}: known languages are {known}")]
    Unknown { name: String, known: String },
    #[error("language file {file}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("reading the language files of {dir}")]
    Read {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("language file {file}: {name:?} is already a language's name or alias")]
    Duplicate { file: String, name: String },
    #[error(
        "language file {file}: {name:?} is no name: a language's name is lowercase letters, digits and dashes (it names images and files), an alias has no spaces, capitals or slashes"
    )]
    BadName { file: String, name: String },
}

/// One language: its root filesystem and how code in it is built and run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Debian packages installed into the language's root filesystem.
    pub packages: Vec<String>,
    /// The file name the code is saved as, e.g. `main.py`.
    pub source_file: String,
    /// Command that compiles the sources, if the language has a compile step.
    #[serde(default)]
    pub compile: Option<Vec<String>>,
    /// Command that runs the program; the request's args are appended.
    pub run: Vec<String>,
    /// What the compile stage makes that the run stage needs: file names,
    /// or `*.suffix`, in the working directory. A judge compiles once and
    /// hands these to the VM of every test.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Command that prints the installed version.
    pub version: Vec<String>,
    /// Environment of every stage (and of `prepare`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Shell command run as root in the root filesystem at image build time,
    /// to do once what every execution would otherwise do (e.g. compile a
    /// standard library).
    #[serde(default)]
    pub prepare: Option<String>,
    /// A tiny program run once in a VM before it is snapshotted, so that
    /// the runtime's files are in the snapshot's page cache (and compilers'
    /// caches warm). No warm-up when absent.
    #[serde(default)]
    pub warm: Option<String>,
    /// A command started in a VM before it is snapshotted, after `warm`: the
    /// runtime past its start-up, waiting to run the program in place of
    /// `run` (see `runner_protocol::PrestartSpec`). No prestart when absent.
    #[serde(default)]
    pub prestart: Option<Vec<String>>,
    /// Default VM memory.
    pub memory_mib: u32,
    /// The least memory a request may ask for.
    pub min_memory_mib: u32,
}

#[derive(Debug, Clone)]
pub struct Languages {
    list: Vec<Language>,
}

impl Languages {
    /// The languages compiled into this binary.
    pub fn builtin() -> Result<Self, LanguageError> {
        let list = LANGUAGE_FILES
            .iter()
            .map(|(file, text)| {
                toml::from_str(text).map_err(|source| LanguageError::Parse {
                    file: (*file).to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<Language>, _>>()?;
        Ok(Self { list })
    }

    /// The built-in languages, then those of the `*.toml` files in `dir`
    /// (in file name order), if given. A file's language may not take a
    /// name or alias that another has.
    pub fn with_dir(dir: Option<&std::path::Path>) -> Result<Self, LanguageError> {
        let mut languages = Self::builtin()?;
        let Some(dir) = dir else {
            return Ok(languages);
        };
        let read = |source| LanguageError::Read {
            dir: dir.display().to_string(),
            source,
        };
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read)?;
        files.retain(|path| path.extension().is_some_and(|e| e == "toml"));
        files.sort();
        for path in files {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(read)?;
            let language: Language =
                toml::from_str(&text).map_err(|source| LanguageError::Parse {
                    file: file.clone(),
                    source,
                })?;
            // The name names images and files; an alias is only looked up.
            let good_name = |name: &str| {
                !name.is_empty()
                    && !name.starts_with('-')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            };
            let good_alias = |alias: &str| {
                !alias.is_empty()
                    && alias
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !c.is_ascii_uppercase() && c != '/')
            };
            for (i, name) in std::iter::once(&language.name)
                .chain(&language.aliases)
                .enumerate()
            {
                let good = if i == 0 {
                    good_name(name)
                } else {
                    good_alias(name)
                };
                if !good {
                    return Err(LanguageError::BadName {
                        file,
                        name: name.clone(),
                    });
                }
                if languages.get(name).is_ok() {
                    return Err(LanguageError::Duplicate {
                        file,
                        name: name.clone(),
                    });
                }
            }
            languages.list.push(language);
        }
        Ok(languages)
    }

    pub fn all(&self) -> &[Language] {
        &self.list
    }

    /// Finds a language by name or alias, case-insensitively.
    pub fn get(&self, name: &str) -> Result<&Language, LanguageError> {
        let wanted = name.trim().to_ascii_lowercase();
        self.list
            .iter()
            .find(|l| l.name == wanted || l.aliases.contains(&wanted))
            .ok_or_else(|| LanguageError::Unknown {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// The languages `names` (names or aliases) select, in this table's
    /// order; all of them when `names` is empty. Unknown names select
    /// nothing (check them with [`Languages::get`] first).
    pub fn selected(&self, names: &[String]) -> Vec<&Language> {
        self.list
            .iter()
            .filter(|language| {
                names.is_empty()
                    || names
                        .iter()
                        .any(|n| self.get(n).is_ok_and(|l| l.name == language.name))
            })
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|l| l.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_language_files_add_to_the_builtin_ones() {
        let example = include_str!("../../../examples/languages/lua.toml");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lua.toml"), example).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a language").unwrap();
        let languages = Languages::with_dir(Some(dir.path())).unwrap();
        assert_eq!(languages.get("lua5.4").unwrap().run, ["lua", "main.lua"]);
        assert!(languages.get("python").is_ok());

        for (file, text, wanted) in [
            (
                "clash.toml",
                example.replace("\"lua\"", "\"python\""),
                "already",
            ),
            (
                "alias.toml",
                example
                    .replace("name = \"lua\"", "name = \"luajit\"")
                    .replace("\"lua5.4\"]", "\"py\"]"),
                "already",
            ),
            (
                "bad.toml",
                example.replace("name = \"lua\"", "name = \"../lua\""),
                "lowercase",
            ),
            ("broken.toml", "name = ".to_string(), "language file"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(file), text).unwrap();
            let error = Languages::with_dir(Some(dir.path())).unwrap_err();
            let message = crate::error_chain(&error);
            assert!(message.contains(wanted), "{file}: {message}");
            assert!(message.contains(file), "{file}: {message}");
        }
        let missing = Languages::with_dir(Some(std::path::Path::new("/nonexistent")));
        assert!(matches!(missing, Err(LanguageError::Read { .. })));
    }

    #[test]
    fn builtin_languages_parse_and_resolve() {
        let languages = Languages::builtin().unwrap();
        assert!(languages.names().contains(&"python"));
        assert_eq!(languages.get("py").unwrap().name, "python");
        assert_eq!(languages.get(" Python ").unwrap().name, "python");
        for language in languages.all() {
            assert!(!language.run.is_empty(), "{}", language.name);
            assert!(language.min_memory_mib <= language.memory_mib);
            assert_eq!(
                language.compile.is_some(),
                !language.artifacts.is_empty(),
                "{}: a compiled language says what its compile makes",
                language.name
            );
        }
    }

    #[test]
    fn the_precompiled_header_is_made_with_the_compiles_flags() {
        // gcc takes a .gch only if the -O, -std and -f flags it was made
        // with are the compile's: otherwise it parses the header again.
        let languages = Languages::builtin().unwrap();
        let cpp = languages.get("cpp").unwrap();
        let compile = cpp.compile.as_ref().unwrap().join(" ");
        let flags = |text: &str| -> Vec<String> {
            text.split_whitespace()
                .filter(|word| {
                    ["-O", "-std=", "-f", "-m"]
                        .iter()
                        .any(|p| word.starts_with(p))
                })
                // What gcc does with the file, not how it compiles.
                .filter(|word| *word != "-fsyntax-only")
                .map(String::from)
                .collect()
        };
        let wanted = flags(&compile);
        assert!(!wanted.is_empty(), "{compile}");
        let prepare = cpp.prepare.as_ref().unwrap();
        let made: Vec<&str> = prepare.lines().filter(|l| l.contains("g++ ")).collect();
        assert_eq!(made.len(), 2, "{prepare}");
        for line in made {
            assert_eq!(flags(line), wanted, "{line}");
        }
    }

    #[test]
    fn selections_by_name_or_alias_keep_the_tables_order() {
        let languages = Languages::builtin().unwrap();
        let names = |picked: Vec<&Language>| -> Vec<String> {
            picked.into_iter().map(|l| l.name.clone()).collect()
        };
        assert_eq!(names(languages.selected(&[])), languages.names());
        let picked = languages.selected(&["py".into(), "bash".into(), "cobol".into()]);
        assert_eq!(names(picked), ["bash", "python"]);
    }

    #[test]
    fn unknown_language_names_the_known_ones() {
        let languages = Languages::builtin().unwrap();
        let message = languages.get("cobol").unwrap_err().to_string();
        assert!(message.contains("\"cobol\""), "{message}");
        assert!(message.contains("python"), "{message}");
    }
}
