//! One capacity rule for the machine: at most so many VMs run an execution
//! at once, whichever runner process started them.
//!
//! `runner serve` admits requests by its own rule (see the API's
//! admission), but `runner run` processes, a second server or a benchmark
//! on the same machine would each have theirs: ten `runner run`s on two
//! CPUs ran ten VMs at once, each charged for the others' load. So every
//! execution also takes one of the machine's slots, lock files in the state
//! directory (`slots/<n>.lock`, held with `flock` for as long as the VM
//! runs the execution), and waits for one when all are held. A process that
//! dies lets its slots go with it. A VM waiting in a warm pool, or a
//! session's VM between executions, holds none.
//!
//! Within a process, executions wait their turn: the first to wait gets
//! the next slot given back (an execution that just ended and asks again
//! does not jump the queue), and a warm pool's refill takes a slot only
//! when no execution waits for one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::vmm::placement::CpuList;

/// How often a waiting execution tries the slots again.
const RETRY: Duration = Duration::from_millis(25);

/// How long an execution waits before it says so.
pub const SAY_AFTER: Duration = Duration::from_secs(1);

/// Called once when an execution has waited [`SAY_AFTER`] for a slot.
pub type OnWait = Arc<dyn Fn(&MachineSlots) + Send + Sync>;

/// The machine's slots, in a state directory.
#[derive(Clone)]
pub struct MachineSlots {
    dir: PathBuf,
    count: usize,
    on_wait: Arc<OnceLock<OnWait>>,
    /// The executions' CPUs (`vm_cpus`); empty for this process's.
    cpus: CpuList,
    /// Held by the execution at the head of this process's queue (tokio's
    /// mutex is fair: waiters get it in the order they asked).
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Told when one of this process's slots is given back.
    released: Arc<tokio::sync::Notify>,
}

/// A slot, held until dropped.
pub struct Slot {
    index: usize,
    cpus: CpuList,
    lock: Option<Flock<File>>,
    /// Told when the slot is given back, so this process's next waiter
    /// need not wait for its next look.
    released: Arc<tokio::sync::Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.lock.take());
        self.released.notify_one();
    }
}

impl Slot {
    /// The host CPU this slot's VM runs its vCPU on: slot n gets the n-th
    /// of the executions' CPUs (`vm_cpus`, else those this process may use;
    /// modulo their number), so that executions at capacity have a CPU
    /// each and are not moved between CPUs, which costs TCG's translated
    /// code its caches.
    pub fn cpu(&self) -> Option<usize> {
        let allowed = CpuList::allowed();
        let cpus = self.cpus.or(&allowed).cpus();
        (!cpus.is_empty()).then(|| cpus[self.index % cpus.len()])
    }
}

impl MachineSlots {
    /// `count` slots under `state_dir/slots`.
    pub fn new(state_dir: &Path, count: usize) -> Self {
        Self {
            dir: state_dir.join("slots"),
            count: count.max(1),
            on_wait: Arc::default(),
            turn: Arc::default(),
            released: Arc::default(),
            cpus: CpuList::default(),
        }
    }

    /// Gives slot n the n-th of `cpus` for its vCPU (see [`Slot::cpu`]).
    pub fn with_cpus(mut self, cpus: CpuList) -> Self {
        self.cpus = cpus;
        self
    }

    /// Calls `on_wait` when an execution has waited a second for a slot
    /// (the first call sets it).
    pub fn on_wait(&self, on_wait: OnWait) {
        let _ = self.on_wait.set(on_wait);
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A free slot now, if there is one and no execution of this process
    /// waits for one.
    pub fn try_take(&self) -> std::io::Result<Option<Slot>> {
        let Ok(_turn) = self.turn.try_lock() else {
            return Ok(None);
        };
        self.lock_free()
    }

    /// Locks a free slot's file, if one is free.
    fn lock_free(&self) -> std::io::Result<Option<Slot>> {
        fs::create_dir_all(&self.dir)?;
        for n in 0..self.count {
            let path = self.dir.join(format!("{n}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(Some(Slot {
                    index: n,
                    cpus: self.cpus.clone(),
                    lock: Some(lock),
                    released: self.released.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Waits for a free slot, after the executions of this process that
    /// waited before.
    pub async fn take(&self) -> std::io::Result<Slot> {
        let began = Instant::now();
        let mut said = false;
        let turn = self.turn.lock();
        tokio::pin!(turn);
        let _turn = match tokio::time::timeout(SAY_AFTER, &mut turn).await {
            Ok(turn) => turn,
            Err(_) => {
                said = true;
                self.say_waiting();
                turn.await
            }
        };
        loop {
            if let Some(slot) = self.lock_free()? {
                if said {
                    tracing::info!(
                        waited_ms = began.elapsed().as_millis() as u64,
                        "got a machine slot"
                    );
                }
                return Ok(slot);
            }
            if !said && began.elapsed() >= SAY_AFTER {
                said = true;
                self.say_waiting();
            }
            // Another process's slot is only seen by looking again.
            tokio::select! {
                () = self.released.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn say_waiting(&self) {
        tracing::info!(slots = self.count, "waiting for a machine slot");
        if let Some(on_wait) = self.on_wait.get() {
            on_wait(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_shared_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let slots = MachineSlots::new(dir.path(), 2);
        // Another process's view of the same directory: flock locks belong
        // to open files, so a second handle contends like a process does.
        let other = MachineSlots::new(dir.path(), 2);
        let first = slots.try_take().unwrap().expect("a free slot");
        let second = other.try_take().unwrap().expect("a free slot");
        assert_eq!((first.index, second.index), (0, 1));
        assert!(first.cpu().is_some());
        assert!(slots.try_take().unwrap().is_none());
        let waited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let told = waited.clone();
        let waiting = MachineSlots::new(dir.path(), 2);
        waiting.on_wait(Arc::new(move |_| {
            told.store(true, std::sync::atomic::Ordering::SeqCst)
        }));
        let taker = tokio::spawn(async move { waiting.take().await.map(|_| ()) });
        tokio::time::sleep(SAY_AFTER + Duration::from_millis(300)).await;
        assert!(!taker.is_finished());
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("the slot given back is taken")
            .unwrap()
            .unwrap();
        drop(second);
        assert!(slots.try_take().unwrap().is_some());
    }

    #[tokio::test]
    async fn executions_get_slots_in_the_order_they_asked_and_refills_wait() {
        let dir = tempfile::tempdir().unwrap();
        let slots = MachineSlots::new(dir.path(), 1);
        let held = MachineSlots::new(dir.path(), 1)
            .try_take()
            .unwrap()
            .unwrap();
        let waiter = |slots: &MachineSlots| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take().await.unwrap() })
        };
        let first = waiter(&slots);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = waiter(&slots);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("the first to wait gets the slot")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "one slot, one execution");
        // A refill does not take a slot from an execution that waits.
        drop(got);
        assert!(slots.try_take().unwrap().is_none());
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second gets it next")
            .unwrap();
        drop(got);
        assert!(slots.try_take().unwrap().is_some(), "nobody waits now");
    }
}
