//! The flags that commands share, spelled once: the limits of the stages,
//! how outputs are compared, files back from a run, and how a program's
//! files, environment and stdin are read. Commands that run code take the
//! same flags for the same things (`run`, `judge`, `session exec`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use runner_host::exec::SourceFile;
use runner_host::judge::{CheckerRequest, Compare, DEFAULT_TOLERANCE};
use runner_wire::{OutputFile, RequestLimits, StageLimits};

/// Largest stdin passed through to a program.
const MAX_STDIN: u64 = 16 << 20;

/// The limit flags: the request's limits of the run stage (and
/// `--compile-wall-time-ms` the compile stage's), named as in the API with
/// the unit in the name. `--timeout`, `--cpu-time` and `--compile-timeout`
/// take seconds instead, as timeout(1) does.
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Wall-clock limit of the run stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "timeout")]
    wall_time_ms: Option<u64>,
    /// Wall-clock limit of the run stage, in seconds.
    #[arg(short, long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// CPU-time limit of the run stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "cpu_time")]
    cpu_time_ms: Option<u64>,
    /// CPU-time limit of the run stage, in seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    cpu_time: Option<f64>,
    /// Memory limit of the run stage, in MiB (the VM gets 64 MiB more).
    #[arg(
        short,
        long = "memory-mib",
        visible_alias = "memory",
        value_name = "MIB"
    )]
    memory_mib: Option<u64>,
    /// Processes and threads the run stage may have at once.
    #[arg(long, value_name = "N")]
    processes: Option<u32>,
    /// Bytes of output kept (stdout and stderr together); the program is
    /// stopped past it.
    #[arg(long, visible_alias = "output-limit", value_name = "BYTES")]
    output_bytes: Option<u64>,
    /// Largest file the program may write, in bytes.
    #[arg(long, visible_alias = "file-size-limit", value_name = "BYTES")]
    file_size_bytes: Option<u64>,
    /// Wall-clock limit of the compile stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "compile_timeout")]
    compile_wall_time_ms: Option<u64>,
    /// Wall-clock limit of the compile stage, in seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    compile_timeout: Option<f64>,
}

impl LimitArgs {
    pub fn request_limits(&self) -> anyhow::Result<RequestLimits> {
        Ok(RequestLimits {
            compile: StageLimits {
                wall_time_ms: either(
                    self.compile_wall_time_ms,
                    "--compile-timeout",
                    self.compile_timeout,
                )?,
                ..Default::default()
            },
            run: StageLimits {
                wall_time_ms: either(self.wall_time_ms, "--timeout", self.timeout)?,
                cpu_time_ms: either(self.cpu_time_ms, "--cpu-time", self.cpu_time)?,
                memory_mib: self.memory_mib,
                processes: self.processes,
                output_bytes: self.output_bytes,
                file_size_bytes: self.file_size_bytes,
            },
        })
    }
}

/// How outputs are compared with the expected ones.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// How to compare with the expected output [default: lines].
    #[arg(long, value_name = "MODE")]
    compare: Option<CompareMode>,
    /// With --compare float: numbers this close are equal [default: 1e-6].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    absolute_tolerance: Option<f64>,
    /// With --compare float: numbers within this fraction of the expected
    /// one are equal [default: 1e-6].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    relative_tolerance: Option<f64>,
    /// A checker program that decides instead, in a VM of its own, as
    /// testlib's do: run as `checker input.txt output.txt expected.txt`, it
    /// exits 0 to accept, 1 for a wrong answer.
    #[arg(long, value_name = "FILE", conflicts_with = "compare")]
    checker: Option<PathBuf>,
    /// The checker's language.
    #[arg(long, value_name = "LANG", requires = "checker")]
    checker_lang: Option<String>,
}

impl CompareArgs {
    pub fn to_compare(&self) -> anyhow::Result<Option<Compare>> {
        if let Some(path) = &self.checker {
            let Some(language) = &self.checker_lang else {
                usage!("--checker needs --checker-lang, the checker's language");
            };
            if self.absolute_tolerance.is_some() || self.relative_tolerance.is_some() {
                usage!("tolerances go with --compare float, not with a checker");
            }
            return Ok(Some(Compare::Checker(CheckerRequest {
                language: language.clone(),
                files: read_files(std::slice::from_ref(path))?,
            })));
        }
        let tolerances = (self.absolute_tolerance, self.relative_tolerance);
        Ok(match self.compare {
            Some(CompareMode::Float) => Some(Compare::Float {
                absolute_tolerance: tolerances.0.unwrap_or(DEFAULT_TOLERANCE),
                relative_tolerance: tolerances.1.unwrap_or(DEFAULT_TOLERANCE),
            }),
            _ if tolerances != (None, None) => {
                usage!("--absolute-tolerance and --relative-tolerance go with --compare float")
            }
            Some(CompareMode::Exact) => Some(Compare::Exact),
            Some(CompareMode::Lines) => Some(Compare::Lines),
            Some(CompareMode::Tokens) => Some(Compare::Tokens),
            None => None,
        })
    }
}

/// `--compare`: the modes of the API's `compare`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CompareMode {
    /// Byte for byte.
    Exact,
    /// Line by line, ignoring whitespace at line ends and blank lines at the end.
    Lines,
    /// Whitespace-separated tokens.
    Tokens,
    /// Tokens, with numbers equal within the tolerances.
    Float,
}

/// Files a run sends back.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Files the program writes to bring back, by path or pattern under
    /// its working directory (`*.png`, `out/**`; repeatable). They are
    /// written under --output-dir.
    #[arg(short = 'O', long = "output", value_name = "PATTERN")]
    pub outputs: Vec<String>,
    /// Where the files named by --output go [default: the current
    /// directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
}

impl OutputArgs {
    /// Writes the files a run sent back under `--output-dir`, each at its
    /// path (the host checked that every path stays relative, without
    /// `..`); says which were over a cap.
    pub fn write(&self, outputs: &[OutputFile]) -> anyhow::Result<()> {
        for output in outputs {
            if output.truncated {
                eprintln!(
                    "runner: {} ({} bytes) is over the cap of files sent back; not written",
                    output.path, output.size
                );
                continue;
            }
            let path = self.output_dir.join(&output.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            std::fs::write(&path, &output.content)
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("runner: wrote {} ({} bytes)", path.display(), output.size);
        }
        Ok(())
    }
}

/// `--env NAME=value` flags as a map.
pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            usage!("--env {pair:?}: expected NAME=value");
        };
        env.insert(name.to_string(), value.to_string());
    }
    Ok(env)
}

/// A file the user named, or a usage error that says why it cannot be read.
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) => usage!("cannot read {}: {e}", path.display()),
    }
}

/// Reads the program's files, named as on disk (the plan names the entry
/// point and checks the names).
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let content = read_input(path)?;
        let Some(name) = path.file_name() else {
            usage!("{} is not a file", path.display());
        };
        // A name that is not UTF-8 would reach the VM changed.
        let Some(name) = name.to_str() else {
            usage!("the name of {} is not UTF-8", path.display());
        };
        files.push(SourceFile::named(name, content));
    }
    Ok(files)
}

/// This process's stdin, for the program: nothing from a terminal.
pub fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut input)
        .context("reading stdin")?;
    if input.len() as u64 > MAX_STDIN {
        usage!("stdin is over {} MiB", MAX_STDIN >> 20);
    }
    Ok(input)
}

/// A limit from its milliseconds flag, or from its seconds flag (which
/// clap keeps from being given too). Zero and negative seconds are passed
/// on as 0, for the limit policy to refuse with its message.
fn either(
    ms: Option<u64>,
    seconds_flag: &str,
    seconds: Option<f64>,
) -> anyhow::Result<Option<u64>> {
    match (ms, seconds) {
        (Some(ms), _) => Ok(Some(ms)),
        (None, None) => Ok(None),
        (None, Some(s)) if !s.is_finite() || s <= 0.0 => Ok(Some(0)),
        (None, Some(s)) if s > 1e9 => usage!("{seconds_flag} {s} is too large"),
        (None, Some(s)) => Ok(Some((s * 1000.0).round().max(1.0) as u64)),
    }
}
