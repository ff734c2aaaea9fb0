//! Tending the pools: a task that recycles stale VMs, shrinks pools whose
//! demand fell off, and restores new VMs up to each pool's target, until
//! the engine it serves is gone or the task is stopped. A restore starts
//! only when a machine slot is free (see [`crate::capacity`]) and runs at
//! the lowest CPU priority, waiting for the next round when there is none:
//! refills yield to executions. Under TCG each restored VM first runs its
//! language's warm-up (see [`PoolConfig::warm_up`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use runner_protocol::ExecRequest;

use crate::exec::acquire::Vms;
use crate::exec::agent;
use crate::lang::Languages;
#[cfg(doc)]
use crate::pool::PoolConfig;
use crate::pool::{Pooled, Pools};
use crate::vmm::{Accel, placement};

/// Each language's warm-up program, planned, by language name.
pub(crate) type WarmUps = HashMap<String, ExecRequest>;

/// Starts the task. It holds the engine weakly: when the engine is
/// dropped, the task ends at its next round.
pub(crate) fn start(
    pools: Arc<Pools>,
    vms: Weak<Vms>,
    languages: Languages,
    warm_ups: WarmUps,
) -> tokio::task::JoinHandle<()> {
    let interval = Duration::from_millis(pools.config.refill_interval_ms.max(10));
    tokio::spawn(async move {
        loop {
            let Some(vms) = vms.upgrade() else {
                return;
            };
            tend(&pools, &vms, &languages, &warm_ups).await;
            drop(vms);
            tokio::select! {
                () = pools.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// One round. Only languages whose images and snapshot exist get a pool.
async fn tend(pools: &Pools, vms: &Vms, languages: &Languages, warm_ups: &WarmUps) {
    for pooled in pools.stale() {
        tracing::info!(language = %pooled.language, "recycling a pooled VM (too old, or its VMM died)");
        pooled.vm.destroy().await;
    }
    for language in languages.selected(&pools.config.languages) {
        for pooled in pools.surplus(&language.name) {
            tracing::info!(language = %pooled.language, "shrinking the warm pool: demand fell off");
            pooled.vm.destroy().await;
        }
        // A full pool needs no images, backend or snapshot looked up:
        // this runs every refill interval for every language.
        if !pools.below_target(&language.name) {
            continue;
        }
        if vms.images().rootfs_manifest(language).is_none()
            || vms.images().boot_files(agent()).is_none()
        {
            continue;
        }
        let Ok(images) = vms.prepare(language, Arc::new(())).await else {
            continue;
        };
        let Ok(backend) = vms.backend(&images.kernel.vmlinux, &images.initramfs).await else {
            continue;
        };
        let Some(snapshot) = vms
            .snapshots()
            .find(&vms.snapshot_key(language, &images, &*backend))
        else {
            continue;
        };
        let warm_up = warm_ups
            .get(&language.name)
            .filter(|_| pools.config.warm_up && backend.info().accel == Accel::Tcg);
        while pools.reserve(&language.name, snapshot.memory_mib()) {
            // Refills yield to executions: one starts only with a machine
            // slot free and no execution waiting for one, else waits for
            // the next round. Its VMM then runs at the lowest CPU priority
            // and needs no slot; where priorities cannot be raised again,
            // it runs at normal priority and keeps the slot.
            let slot = match vms.slots().map(|slots| slots.try_take()) {
                Some(Ok(Some(slot))) => Some(slot),
                None => None,
                Some(Ok(None) | Err(_)) => {
                    pools.unreserve(&language.name, snapshot.memory_mib());
                    break;
                }
            };
            let slot = slot.filter(|_| !placement::may_raise_priority());
            let restored = vms
                .restore_paused(&images, &snapshot, &*backend, warm_up)
                .await;
            drop(slot);
            match restored {
                Ok(vm) => pools.put(Pooled {
                    vm,
                    language: language.name.clone(),
                    memory_mib: snapshot.memory_mib(),
                    created: Instant::now(),
                }),
                Err(e) => {
                    pools.unreserve(&language.name, snapshot.memory_mib());
                    tracing::warn!(language = %language.name, error = %crate::error_chain(&e), "could not fill the warm pool");
                    break;
                }
            }
        }
    }
}
