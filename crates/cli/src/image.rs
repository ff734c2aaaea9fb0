//! `runner image`: the guest images, built ahead of time, listed, pruned.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use runner_host::Runner;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build the images a language needs (every enabled language without
    /// --lang).
    Build {
        #[arg(short, long)]
        lang: Vec<String>,
    },
    /// List built images with their size, hash and age.
    List,
    /// Remove images the current recipes no longer use.
    Prune,
}

pub async fn image(runner: Runner, command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build { lang } => {
            let mut kernel_shown = false;
            for language in selected(&runner, &lang)? {
                let images = runner
                    .prepare(&language, Arc::new(crate::progress::Spinner::new()))
                    .await?;
                if !kernel_shown {
                    let kernel = &images.kernel;
                    outln!(
                        "kernel: {} ({}, built in {:.0} s, {:.1} MiB)",
                        kernel.version,
                        kernel.id,
                        kernel.build_seconds,
                        kernel.size_bytes as f64 / f64::from(1 << 20)
                    );
                    kernel_shown = true;
                }
                outln!(
                    "{}: {} ({})",
                    language.name,
                    images.rootfs_manifest.version,
                    images.rootfs_manifest.id
                );
            }
        }
        ImageCommand::Prune => {
            let languages = runner.languages().all().to_vec();
            let removed = runner.images().prune(
                &languages,
                runner_host::exec::agent(),
                &runner_host::session::files_of_paused(&runner.state().sessions()),
            )?;
            for id in &removed {
                outln!("removed {id}");
            }
            outln!("{} image(s) removed", removed.len());
        }
        ImageCommand::List => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            outln!(
                "{:<36} {:>9} {:>9} {:>8}  VERSION",
                "IMAGE",
                "SIZE",
                "BUILD",
                "AGE"
            );
            for m in runner.images().list()? {
                outln!(
                    "{:<36} {:>9} {:>8.1}s {:>8}  {}",
                    m.id,
                    format!("{:.1} MiB", m.size_bytes as f64 / (1 << 20) as f64),
                    m.build_seconds,
                    age(now.saturating_sub(m.built_at)),
                    m.version
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The languages named (every enabled one when none are).
pub fn selected(
    runner: &Runner,
    names: &[String],
) -> anyhow::Result<Vec<runner_host::lang::Language>> {
    if names.is_empty() {
        return Ok(runner.enabled_languages().into_iter().cloned().collect());
    }
    Ok(names
        .iter()
        .map(|l| runner.language(l).cloned())
        .collect::<Result<_, _>>()?)
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
