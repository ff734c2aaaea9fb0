//! A request, checked once and resolved into a [`Plan`]: the language, the
//! files with the entry point named, the environment, and every stage's
//! command and limits. The rest of the engine takes the plan as it is and
//! never looks at the request again, so a wrong request is refused here,
//! before anything is built or booted.

use std::collections::BTreeMap;

use runner_protocol::{
    ExecRequest, File, Frame, HEADER_LEN, Interactive, MAX_HOST_FRAME, Stage, StageSpec,
};
use runner_wire::ErrorCode;

use super::limits::{LimitPolicy, RequestLimits};
use crate::lang::{Language, LanguageError, Languages};
use crate::net::{Egress, NetworkConfig, NetworkRequest};
use crate::vmm::vm_memory_mib;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Language(#[from] LanguageError),
    #[error("{language} is not enabled here; this runner runs {enabled}")]
    NotEnabled { language: String, enabled: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request asks for network this server does not give.
    #[error("{0}")]
    Network(String),
    /// Within the protocol's rules but more than a request may carry.
    #[error("request too large: {0}")]
    TooLarge(String),
}

impl PlanError {
    /// The error's kind, as every front end reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            PlanError::Language(_) | PlanError::NotEnabled { .. } => ErrorCode::UnknownLanguage,
            PlanError::Network(_) => ErrorCode::NetworkNotAllowed,
            PlanError::TooLarge(_) => ErrorCode::RequestTooLarge,
            PlanError::Invalid(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// A file of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// A relative path in the working directory. `None` only for the first
    /// file, which is then the entry point.
    pub name: Option<String>,
    pub content: Vec<u8>,
}

impl SourceFile {
    pub fn named(name: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        Self {
            name: Some(name.into()),
            content: content.into(),
        }
    }

    /// The program's entry point, named as its language expects.
    pub fn entry(content: impl Into<Vec<u8>>) -> Self {
        Self {
            name: None,
            content: content.into(),
        }
    }
}

/// The most rows or columns a terminal may have.
const MAX_TERMINAL: u16 = 1000;

/// What a caller (the CLI, the API, the bench) asks to run.
#[derive(Debug, Clone, Default)]
pub struct ExecutionRequest {
    /// A language name or alias.
    pub language: String,
    /// The entry point is the file named as the language expects
    /// (`main.py`, ...); if there is none, the first file, which gets that
    /// name.
    pub files: Vec<SourceFile>,
    pub stdin: Vec<u8>,
    /// Appended to the run command.
    pub args: Vec<String>,
    /// On top of the language's environment.
    pub env: BTreeMap<String, String>,
    pub limits: RequestLimits,
    /// Given by the caller (e.g. from a `traceparent` header), else made up.
    pub trace_id: Option<String>,
    /// A shell command (`/bin/sh -c`) run instead of the language's
    /// program, with `args` as `$1`...; the files are then optional, each
    /// named, and nothing is compiled.
    pub command: Option<String>,
    /// The program takes input while it runs (a WebSocket client's), on
    /// a terminal if asked.
    pub interactive: Option<Interactive>,
    /// Files of the working directory to send back after the run: paths
    /// or patterns (see [`runner_protocol::glob`]).
    pub outputs: Vec<String>,
    /// What the program may reach of the network; none when not given.
    pub network: Option<NetworkRequest>,
    /// Who asks: an API key's name, empty for this machine's own user.
    /// What one owner's compiles made serves only that owner (see
    /// [`crate::compile_cache`]).
    pub owner: String,
}

/// An accepted request, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub trace_id: String,
    pub language: Language,
    /// What the agent gets: files, stages with their commands and limits,
    /// stdin, environment.
    pub exec: ExecRequest,
    /// The VM's memory: the largest stage limit plus the guest's reserve.
    pub vm_memory_mib: u32,
    /// What it may reach of the network, if anything.
    pub network: Option<Egress>,
    /// Who asked (see [`ExecutionRequest::owner`]).
    pub owner: String,
}

impl Plan {
    /// The stage the agent runs after `done` stages have reported.
    pub fn stage(&self, done: usize) -> Option<&StageSpec> {
        self.exec.stages.get(done)
    }
}

/// A W3C trace id: 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Which stages of a program a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Every stage: what an execution runs.
    Whole,
    /// The compile stage only, sending back what it made (the language's
    /// `artifacts`): a judge's first step.
    Compile,
    /// The run stage only: a judge's test. Its files (the program and what
    /// the compile made) are added when it runs, so the request may have
    /// none.
    Run,
}

/// Turns requests into plans with the languages and limits of one
/// configuration.
#[derive(Debug, Clone)]
pub struct Planner {
    languages: Languages,
    limits: LimitPolicy,
    /// Names of the languages that run here; empty for all.
    enabled: Vec<String>,
    network: NetworkConfig,
}

impl Planner {
    /// `enabled` are names or aliases (checked by the configuration); none
    /// enables every language.
    pub fn new(languages: Languages, limits: LimitPolicy, enabled: &[String]) -> Self {
        let enabled = if enabled.is_empty() {
            Vec::new()
        } else {
            languages
                .selected(enabled)
                .into_iter()
                .map(|l| l.name.clone())
                .collect()
        };
        Self {
            languages,
            limits,
            enabled,
            network: NetworkConfig::default(),
        }
    }

    /// The planner, granting requests the network within `network`.
    pub fn with_network(self, network: NetworkConfig) -> Self {
        Self { network, ..self }
    }

    /// What a request asking for `request` may reach of the network.
    pub fn network(&self, request: Option<&NetworkRequest>) -> Result<Option<Egress>, PlanError> {
        request
            .map(|request| self.network.grant(request).map_err(PlanError::Network))
            .transpose()
    }

    pub fn languages(&self) -> &Languages {
        &self.languages
    }

    pub fn limits(&self) -> &LimitPolicy {
        &self.limits
    }

    /// The languages that run here, in the table's order.
    pub fn enabled(&self) -> Vec<&Language> {
        self.languages.selected(&self.enabled)
    }

    /// `name` (or an alias) if it runs here.
    pub fn language(&self, name: &str) -> Result<&Language, PlanError> {
        let language = self.languages.get(name)?;
        if !self.enabled.is_empty() && !self.enabled.contains(&language.name) {
            return Err(PlanError::NotEnabled {
                language: language.name.clone(),
                enabled: self.enabled.join(", "),
            });
        }
        Ok(language)
    }

    /// Checks `request` and resolves everything the execution needs.
    pub fn plan(&self, request: ExecutionRequest) -> Result<Plan, PlanError> {
        self.plan_part(request, Part::Whole)
    }

    /// [`Planner::plan`] for `part` of the program.
    pub fn plan_part(&self, request: ExecutionRequest, part: Part) -> Result<Plan, PlanError> {
        let language = self.language(&request.language)?.clone();
        if request.outputs.len() > super::outputs::MAX_PATTERNS {
            return Err(PlanError::Invalid(format!(
                "outputs names at most {} patterns",
                super::outputs::MAX_PATTERNS
            )));
        }
        for pattern in &request.outputs {
            runner_protocol::glob::check(pattern).map_err(PlanError::Invalid)?;
        }
        if let Some(size) = request.interactive.and_then(|i| i.pty) {
            if !(1..=MAX_TERMINAL).contains(&size.rows) || !(1..=MAX_TERMINAL).contains(&size.cols)
            {
                return Err(PlanError::Invalid(format!(
                    "pty: rows and cols must be 1 to {MAX_TERMINAL}, not {} and {}",
                    size.rows, size.cols
                )));
            }
        }
        if part == Part::Compile && language.compile.is_none() {
            return Err(PlanError::Invalid(format!(
                "{} has no compile stage",
                language.name
            )));
        }
        self.resolve(language, request, part)
    }

    /// The plan of `language`'s warm-up program `code`, run in a VM before
    /// its snapshot, with the default limits (whether or not the language
    /// is enabled here).
    pub fn warm_up(&self, language: &Language, code: &str) -> Result<Plan, PlanError> {
        let request = ExecutionRequest {
            language: language.name.clone(),
            files: vec![SourceFile::entry(code)],
            ..ExecutionRequest::default()
        };
        self.resolve(language.clone(), request, Part::Whole)
    }

    fn resolve(
        &self,
        language: Language,
        request: ExecutionRequest,
        part: Part,
    ) -> Result<Plan, PlanError> {
        if let Some(command) = &request.command {
            if part != Part::Whole {
                return Err(PlanError::Invalid(
                    "a command cannot be judged; send the program's files".into(),
                ));
            }
            check_exec_strings(std::slice::from_ref(command), &BTreeMap::new())
                .map_err(|e| PlanError::Invalid(e.to_string().replace("args[0]", "command")))?;
            if command.trim().is_empty() {
                return Err(PlanError::Invalid("command is empty".into()));
            }
        }
        let files = if (part == Part::Run || request.command.is_some()) && request.files.is_empty()
        {
            Vec::new()
        } else if request.command.is_some() {
            named_files(request.files)?
        } else {
            name_files(request.files, &language.source_file)?
        };
        if files
            .iter()
            .enumerate()
            .any(|(i, f)| files[..i].iter().any(|g| g.name == f.name))
        {
            return Err(PlanError::Invalid("two files have the same name".into()));
        }
        check_exec_strings(&request.args, &request.env)?;
        let network = self.network(request.network.as_ref())?;
        let trace_id = request.trace_id.unwrap_or_else(new_trace_id);
        let mut stages = Vec::new();
        if let Some(command) = request.command {
            let mut run = vec!["/bin/sh".into(), "-c".into(), command, "sh".into()];
            run.extend(request.args);
            stages.push((Stage::Run, run));
        } else {
            if let (Some(compile), Part::Whole | Part::Compile) = (&language.compile, part) {
                stages.push((Stage::Compile, compile.clone()));
            }
            if part != Part::Compile {
                let mut run = language.run.clone();
                run.extend(request.args);
                stages.push((Stage::Run, run));
            }
        }
        let mut largest = 0;
        let mut specs = Vec::with_capacity(stages.len());
        for (stage, argv) in stages {
            let limits = self
                .limits
                .resolve(
                    stage,
                    super::limits::of_stage(&request.limits, stage),
                    &language,
                )
                .map_err(PlanError::Invalid)?;
            largest = largest.max(limits.memory_mib);
            specs.push(StageSpec {
                stage,
                argv,
                // Only the program reads the request's input.
                stdin: stage == Stage::Run,
                limits: limits.to_protocol(),
            });
        }
        // The language's environment, then the request's on top.
        let mut env = language.env.clone();
        if network.is_some() {
            env.extend(Egress::env());
        }
        env.extend(request.env);
        let exec = ExecRequest {
            language: language.name.clone(),
            files,
            stages: specs,
            stdin: request.stdin,
            env,
            collect: if part == Part::Compile {
                language.artifacts.clone()
            } else {
                Vec::new()
            },
            collect_after: None,
            interactive: request.interactive.filter(|_| part != Part::Compile),
            outputs: Some(request.outputs)
                .filter(|patterns| !patterns.is_empty() && part != Part::Compile)
                .map(super::outputs::spec),
            network: network.is_some() && part != Part::Compile,
        };
        let exec = fits_one_frame(exec)?;
        Ok(Plan {
            trace_id,
            language,
            exec,
            vm_memory_mib: vm_memory_mib(largest),
            network,
            owner: request.owner,
        })
    }
}

/// `exec`, if it fits the one frame the agent takes it in: files and stdin
/// travel base64-encoded, so about 12 MiB of them fit the 16 MiB frame.
/// Refused here rather than by the agent once a VM has booted.
pub(crate) fn fits_one_frame(exec: ExecRequest) -> Result<ExecRequest, PlanError> {
    let frame = Frame::Exec(exec);
    let mut encoded = Vec::new();
    runner_protocol::encode(&frame, &mut encoded);
    let payload = encoded.len() - HEADER_LEN;
    if payload > MAX_HOST_FRAME as usize {
        return Err(PlanError::TooLarge(format!(
            "files, stdin, args and env come to {:.1} MiB encoded for the VM; at most {} MiB \
             (about {} MiB of file content and stdin) reach it",
            payload as f64 / f64::from(1 << 20),
            MAX_HOST_FRAME >> 20,
            (MAX_HOST_FRAME >> 20) * 3 / 4,
        )));
    }
    let Frame::Exec(exec) = frame else {
        unreachable!("made as an Exec frame")
    };
    Ok(exec)
}

/// The longest argument or environment entry `execve` takes
/// (`MAX_ARG_STRLEN`, 32 pages, less its NUL).
const MAX_EXEC_STRING: usize = (32 << 12) - 1;
/// Arguments and environment together: a quarter of the guest's `ARG_MAX`
/// (a quarter of its 8 MiB stack), so the language's own fit beside them.
const MAX_EXEC_TOTAL: usize = 512 << 10;

/// Refuses arguments and environment that cannot reach a program intact:
/// a NUL byte ends a C string (it would cut or split the value), and
/// `execve` refuses strings and totals past its limits.
pub(crate) fn check_exec_strings(
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), PlanError> {
    let invalid = |message: String| Err(PlanError::Invalid(message));
    for (i, arg) in args.iter().enumerate() {
        if arg.contains('\0') {
            return invalid(format!(
                "args[{i}] contains a NUL byte, which no program can receive in an argument"
            ));
        }
        if arg.len() > MAX_EXEC_STRING {
            return invalid(format!(
                "args[{i}] is {} bytes; an argument can be at most {MAX_EXEC_STRING}",
                arg.len()
            ));
        }
    }
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return invalid(format!(
                "environment variable name {key:?} is empty or contains '=' or a NUL byte"
            ));
        }
        if value.contains('\0') {
            return invalid(format!(
                "environment variable {key} contains a NUL byte, which no program can receive"
            ));
        }
        if key.len() + 1 + value.len() > MAX_EXEC_STRING {
            return invalid(format!(
                "environment variable {key} is over {MAX_EXEC_STRING} bytes"
            ));
        }
    }
    let total: usize = args.iter().map(|a| a.len() + 1).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if total > MAX_EXEC_TOTAL {
        return invalid(format!(
            "args and env are {total} bytes together; they can be at most {MAX_EXEC_TOTAL}"
        ));
    }
    Ok(())
}

/// The files with the entry point named `entry`: the file already named so,
/// else the first file. Only the first file may come without a name, and
/// every name given is checked, the first file's too, even when it is
/// then replaced.
fn name_files(files: Vec<SourceFile>, entry: &str) -> Result<Vec<File>, PlanError> {
    if files.is_empty() {
        return Err(PlanError::Invalid(
            "there are no files: send at least the program".into(),
        ));
    }
    for (i, name) in files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((i, f.name.as_deref()?)))
    {
        check_file_name(i, name)?;
    }
    let has_entry = files.iter().any(|f| f.name.as_deref() == Some(entry));
    files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let name = match file.name {
                _ if i == 0 && !has_entry => entry.to_string(),
                Some(name) => name,
                None => {
                    return Err(PlanError::Invalid(format!(
                        "files[{i}] has no name; only the first file may leave it out"
                    )));
                }
            };
            Ok(File {
                name,
                content: file.content,
                executable: false,
            })
        })
        .collect()
}

/// Files that all have names (beside a command, none is the program).
fn named_files(files: Vec<SourceFile>) -> Result<Vec<File>, PlanError> {
    files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let Some(name) = file.name else {
                return Err(PlanError::Invalid(format!(
                    "files[{i}] has no name; beside a command every file needs one"
                )));
            };
            check_file_name(i, &name)?;
            Ok(File {
                name,
                content: file.content,
                executable: false,
            })
        })
        .collect()
}

/// A name the file system takes, inside the working directory.
fn check_file_name(index: usize, name: &str) -> Result<(), PlanError> {
    match path_problem(name) {
        Some(why) => Err(PlanError::Invalid(format!(
            "files[{index}].name {name:?} {why}"
        ))),
        None => Ok(()),
    }
}

/// What is wrong with `name` as a path of the working directory, if
/// anything: the rule for a request's files and for a session's.
pub(crate) fn path_problem(name: &str) -> Option<&'static str> {
    if name.contains('\0') {
        return Some("contains a NUL byte, which no file name can");
    }
    if name.is_empty() || name.len() > 255 {
        return Some("must be 1 to 255 bytes long");
    }
    let path = std::path::Path::new(name);
    if !path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Some("must be a relative path inside the working directory");
    }
    // Compile commands pass the request's files by glob (`./*.c`), and a
    // name like `@opts.c` or `-wrapper.c` would reach the compiler as an
    // option: gcc's `@file` reads options from a file of the request, even
    // behind `./` (the driver hands cc1 `-dumpbase @opts.c`).
    if path
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with(['-', '@']))
    {
        return Some(
            "has a part that starts with '-' or '@', which compilers would read as an option",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::StageLimits;

    fn planner(enabled: &[&str]) -> Planner {
        let enabled: Vec<String> = enabled.iter().map(|s| s.to_string()).collect();
        Planner::new(
            Languages::builtin().unwrap(),
            LimitPolicy::default(),
            &enabled,
        )
    }

    fn request(language: &str, files: Vec<SourceFile>) -> ExecutionRequest {
        ExecutionRequest {
            language: language.into(),
            files,
            ..ExecutionRequest::default()
        }
    }

    #[test]
    fn a_plan_has_typed_stages_with_resolved_limits() {
        let mut asked = request("rs", vec![SourceFile::entry("fn main() {}")]);
        asked.args = vec!["a".into()];
        asked.limits.run.wall_time_ms = Some(2_000);
        asked.limits.compile.memory_mib = Some(2048);
        asked.trace_id = Some("abc".into());
        let plan = planner(&[]).plan(asked).unwrap();
        assert_eq!(plan.trace_id, "abc");
        assert_eq!(plan.language.name, "rust");
        let stages: Vec<Stage> = plan.exec.stages.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Compile, Stage::Run]);
        let (compile, run) = (&plan.exec.stages[0], &plan.exec.stages[1]);
        assert!(!compile.stdin && run.stdin);
        assert_eq!(run.limits.wall_time_ms, 2_000);
        assert_eq!(
            compile.limits.wall_time_ms,
            LimitPolicy::default().compile.wall_time_ms
        );
        assert_eq!(run.argv.last().map(String::as_str), Some("a"));
        assert_eq!(plan.vm_memory_mib, 2048 + 64, "the largest stage decides");
        assert_eq!(plan.exec.files[0].name, "main.rs");
        assert_eq!(plan.stage(1).map(|s| s.stage), Some(Stage::Run));
        assert!(plan.stage(2).is_none());
    }

    #[test]
    fn the_entry_point_is_named_once_for_every_caller() {
        let named = |files: Vec<SourceFile>| -> Vec<String> {
            let plan = planner(&[]).plan(request("python", files)).unwrap();
            plan.exec.files.into_iter().map(|f| f.name).collect()
        };
        assert_eq!(named(vec![SourceFile::entry("")]), ["main.py"]);
        assert_eq!(
            named(vec![
                SourceFile::named("hello.py", ""),
                SourceFile::named("util.py", "")
            ]),
            ["main.py", "util.py"],
            "no main.py: the first file becomes it"
        );
        assert_eq!(
            named(vec![
                SourceFile::named("util.py", ""),
                SourceFile::named("main.py", "")
            ]),
            ["util.py", "main.py"]
        );
        let refused = |files: Vec<SourceFile>| {
            planner(&[])
                .plan(request("python", files))
                .unwrap_err()
                .to_string()
        };
        assert!(refused(vec![]).contains("no files"));
        assert!(refused(vec![SourceFile::entry(""), SourceFile::entry("")]).contains("files[1]"));
        assert!(
            refused(vec![
                SourceFile::named("main.py", ""),
                SourceFile::named("main.py", "")
            ])
            .contains("same name")
        );
        assert!(
            refused(vec![
                SourceFile::entry(""),
                SourceFile::named("../etc/passwd", "")
            ])
            .contains("files[1].name \"../etc/passwd\" must be a relative path")
        );
        // The first file's name is checked too, although it would be
        // replaced by the entry point's.
        // Names a compiler would read as options, wherever they are.
        for bad in ["@opts.c", "-B.c", "src/-wrapper.c", "@/x.c"] {
            let message = refused(vec![SourceFile::entry(""), SourceFile::named(bad, "")]);
            assert!(message.contains("starts with '-' or '@'"), "{message}");
        }
        for bad in ["a\0b.py", "/etc/passwd", "", "..", &"x".repeat(256)] {
            let message = refused(vec![SourceFile::named(bad, "")]);
            assert!(
                message.starts_with("invalid request: files[0].name"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_judge_plans_the_compile_and_the_runs_apart() {
        let mut asked = request("java", vec![SourceFile::entry("class Main {}")]);
        asked.args = vec!["x".into()];
        let compile = planner(&[])
            .plan_part(asked.clone(), Part::Compile)
            .unwrap();
        let stages: Vec<Stage> = compile.exec.stages.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Compile]);
        assert_eq!(compile.exec.collect, ["*.class"]);
        assert_eq!(compile.exec.files[0].name, "Main.java");
        asked.files.clear();
        let run = planner(&[]).plan_part(asked.clone(), Part::Run).unwrap();
        let stages: Vec<Stage> = run.exec.stages.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Run]);
        assert_eq!(
            run.exec.stages[0].argv.last().map(String::as_str),
            Some("x")
        );
        assert!(run.exec.files.is_empty() && run.exec.collect.is_empty());
        assert!(
            planner(&[]).plan(asked).is_err(),
            "a whole plan needs files"
        );
        let python = request("python", vec![SourceFile::entry("")]);
        let message = planner(&[])
            .plan_part(python, Part::Compile)
            .unwrap_err()
            .to_string();
        assert!(message.contains("no compile stage"), "{message}");
    }

    #[test]
    fn arguments_and_environment_must_reach_execve_intact() {
        let with = |args: Vec<String>, env: Vec<(String, String)>| {
            let mut request = request("bash", vec![SourceFile::entry("")]);
            request.args = args;
            request.env = env.into_iter().collect();
            planner(&[])
                .plan(request)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let refused = |args: Vec<String>, env: Vec<(String, String)>, says: &str| {
            let message = with(args, env).unwrap_err();
            assert!(message.contains(says), "{message} does not say {says}");
        };
        refused(
            vec!["ok".into(), "a\0b".into()],
            vec![],
            "args[1] contains a NUL byte",
        );
        refused(
            vec![],
            vec![("A".into(), "x\0y".into())],
            "A contains a NUL",
        );
        refused(vec![], vec![("A\0B".into(), "x".into())], "name \"A\\0B\"");
        refused(vec![], vec![("".into(), "x".into())], "empty");
        refused(
            vec!["x".repeat(MAX_EXEC_STRING + 1)],
            vec![],
            "args[0] is 131072 bytes",
        );
        refused(
            vec!["x".repeat(100_000); 6],
            vec![],
            "can be at most 524288",
        );
        assert!(
            with(
                vec!["x".repeat(MAX_EXEC_STRING), "héllo ☃".into(), String::new()],
                vec![("LANG".into(), "C.UTF-8".into())]
            )
            .is_ok()
        );
    }

    #[test]
    fn wrong_requests_are_refused_with_what_to_change() {
        let e = planner(&[])
            .plan(request("cobol", vec![SourceFile::entry("")]))
            .unwrap_err();
        assert!(matches!(e, PlanError::Language(_)), "{e}");
        let e = planner(&["python", "sh"])
            .plan(request("go", vec![SourceFile::entry("")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "go is not enabled here; this runner runs bash, python"
        );
        assert!(
            planner(&["python"])
                .plan(request("py", vec![SourceFile::entry("")]))
                .is_ok()
        );
        let mut bad_env = request("bash", vec![SourceFile::entry("")]);
        bad_env.env.insert("A=B".into(), "c".into());
        assert!(planner(&[]).plan(bad_env).is_err());
        let mut bad_limit = request("bash", vec![SourceFile::entry("")]);
        bad_limit.limits.run = StageLimits {
            processes: Some(0),
            ..StageLimits::default()
        };
        assert_eq!(
            planner(&[]).plan(bad_limit).unwrap_err().to_string(),
            "invalid request: run.processes must be above 0"
        );
    }
}
