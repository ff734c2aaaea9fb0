//! Making a snapshot: boot a template VM with its memory in the snapshot's
//! file, wait for its agent, warm the language's runtime, prestart it, let
//! the guest settle, and save the VM's state.

use std::sync::Arc;
use std::time::Duration;

use runner_protocol::ExecRequest;

use crate::exec::acquire::Vms;
use crate::exec::{ConversationError, PlanError, conversation, new_trace_id};
use crate::image::ImageError;
use crate::lang::Language;
use crate::snapshot::Snapshot;
use crate::vmm::{Memory, VmmError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("preparing guest images")]
    Image(#[from] ImageError),
    /// Locking, checking space for or moving the snapshot's files.
    #[error("storing the snapshot")]
    Store(#[source] ImageError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The language's warm-up does not plan (e.g. the configured default
    /// limits do not fit it).
    #[error("planning the warm-up")]
    Plan(#[from] PlanError),
    #[error(
        "the {language} template VM: {}; console:\n{console}",
        crate::error_chain(error)
    )]
    Template {
        language: String,
        error: ConversationError,
        console: String,
    },
}

/// Room for the device state beside the memory, generously.
const STATE_MIB: u64 = 64;

/// How long a template VM may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a template VM idles before its snapshot. Work the guest kernel
/// defers after the warm-up (presumably freeing the warm-up's processes
/// and cgroup) then happens once here instead of after every restore: it
/// took restore-to-ready for Node from 133 to 92 ms (median of 4 and 6)
/// under TCG.
const SETTLE: Duration = Duration::from_secs(1);

/// `language`'s snapshot, made first if it does not exist. `warm` is the
/// warm-up to run in the template VM, if the language has one.
pub(crate) async fn make(
    vms: &Vms,
    language: &Language,
    warm: Option<ExecRequest>,
) -> Result<Snapshot, SnapshotError> {
    let images = vms.prepare(language, Arc::new(())).await?;
    let backend = vms
        .backend(&images.kernel.vmlinux, &images.initramfs)
        .await?;
    let key = vms.snapshot_key(language, &images, &*backend);
    let memory_mib = key.memory_mib;
    let store = vms.snapshots().clone();
    let begun = tokio::task::spawn_blocking(move || store.begin(&key))
        .await
        .expect("locking does not panic")
        .map_err(SnapshotError::Store)?;
    let pending = match begun {
        Ok(pending) => pending,
        Err(existing) => return Ok(existing),
    };
    // The template's memory file fills as the guest touches its memory:
    // refused now rather than a VM killed by a full disk halfway.
    crate::image::require_space(pending.dir(), u64::from(memory_mib) + STATE_MIB)
        .map_err(SnapshotError::Store)?;
    let id = format!("snapshot-{}-{}", language.name, new_trace_id());
    let memory = Memory::Template {
        path: pending.memory(),
    };
    let spec = vms.spec(&images, memory_mib, &id, memory);
    let (mut vm, _running) = vms.start(&*backend, spec).await?;
    let prestart = vms.prestart(language);
    let made = async {
        let channel = vm.channel();
        conversation::await_ready(channel, None, BOOT_TIMEOUT).await?;
        if let Some(warm) = warm {
            conversation::warm(channel, warm).await?;
        }
        if let Some(spec) = prestart {
            conversation::prestart(channel, spec).await?;
        }
        Ok::<_, ConversationError>(())
    }
    .await;
    let saved = match made {
        Ok(()) => {
            tokio::time::sleep(SETTLE).await;
            vm.snapshot(&pending.state())
                .await
                .map_err(SnapshotError::from)
        }
        Err(error) => Err(SnapshotError::Template {
            language: language.name.clone(),
            error,
            console: vm.console_tail(),
        }),
    };
    vm.destroy().await;
    saved?;
    pending.finish().map_err(SnapshotError::Store)
}
