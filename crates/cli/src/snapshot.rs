//! `runner snapshot`: ready VMs saved to restore instead of booting.

use std::process::ExitCode;

use clap::Subcommand;
use runner_host::Runner;

use crate::image::selected;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Boot a VM per language until it is ready, warm it, and save it, so
    /// that executions restore it instead of booting (every enabled
    /// language without --lang). Builds missing images first.
    Create {
        #[arg(short, long)]
        lang: Vec<String>,
    },
    /// List snapshots with their size, id and what they were made from.
    List,
    /// Remove snapshots this runner no longer restores (made from older
    /// images, agents or settings), except those a paused session needs.
    Prune,
}

pub async fn snapshot(runner: Runner, command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Create { lang } => {
            for language in selected(&runner, &lang)? {
                let spinner = crate::progress::Spinner::new();
                runner_host::image::Progress::step(
                    &spinner,
                    &format!("snapshot of {}", language.name),
                );
                let snapshot = runner.snapshot(&language).await?;
                drop(spinner);
                outln!(
                    "{}: {} ({:.1} s to make)",
                    language.name,
                    snapshot.manifest.id,
                    snapshot.manifest.create_seconds
                );
            }
        }
        SnapshotCommand::Prune => {
            let keep = runner.current_snapshot_ids().await?;
            let paused = runner_host::session::files_of_paused(&runner.state().sessions());
            let removed = runner.snapshots().prune(&keep, &paused)?;
            for id in &removed {
                outln!("removed {id}");
            }
            outln!("{} snapshot(s) removed", removed.len());
        }
        SnapshotCommand::List => {
            outln!(
                "{:<36} {:<8} {:>8} {:>8} {:>7}  MADE FROM",
                "ID",
                "MEMORY",
                "ON DISK",
                "STATE",
                "MADE IN"
            );
            for m in runner.snapshots().list() {
                outln!(
                    "{:<36} {:<8} {:>8} {:>8} {:>6.1}s  {} {} {}",
                    m.id,
                    format!("{} MiB", m.key.memory_mib),
                    format!("{} MiB", m.memory_allocated_bytes >> 20),
                    format!("{} KiB", m.state_bytes >> 10),
                    m.create_seconds,
                    m.key.rootfs,
                    m.key.initramfs,
                    m.key.accel,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
