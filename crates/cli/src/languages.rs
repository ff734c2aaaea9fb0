//! `runner languages`: the languages, and the version each image has.

use std::process::ExitCode;

use runner_host::Runner;

pub fn languages(runner: Runner) -> anyhow::Result<ExitCode> {
    outln!(
        "{:<10} {:<24} {:<10} VERSION",
        "LANGUAGE",
        "ALIASES",
        "MEMORY"
    );
    for language in runner.language_infos() {
        outln!(
            "{:<10} {:<24} {:<10} {}",
            language.language,
            language.aliases.join(","),
            format!("{} MiB", language.memory_mib),
            language
                .version
                .unwrap_or_else(|| "(image not built: runner image build)".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}
