//! Admission control: how many VMs may run at once, and what happens to the
//! requests beyond that.
//!
//! The seed's rule is `concurrent VMs = (host memory - reserved) / VM
//! memory`, bounded by the CPUs. VMs differ in size (a request's memory limit
//! decides its VM's), so memory is counted in MiB: a request holds as many
//! MiB as its VM has, and one of `max_vms` slots. A request that cannot have
//! both at once waits in a FIFO queue of `queue_size` places for at most
//! `queue_timeout`; a full queue or a timeout is a [`Rejection`], before
//! anything has started.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runner_wire::ErrorCode;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the machine allows, worked out once at start-up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Capacity {
    pub host_memory_mib: u64,
    pub reserved_memory_mib: u64,
    pub cpus: usize,
    /// VMs at once, whatever their size.
    pub max_vms: usize,
    /// Memory all executions' VMs together may have.
    pub vm_memory_budget_mib: u64,
    /// Memory set aside for warm pools, out of what VMs may have.
    pub pool_memory_mib: u64,
}

impl Capacity {
    /// From the host's memory and CPUs; `max_vms` 0 means one per CPU.
    pub fn of_host(reserved_memory_mib: u64, max_vms: usize) -> Result<Self, String> {
        let host_memory_mib = runner_host::machine::host_memory_mib()
            .map_err(|e| format!("cannot read the host's memory from /proc/meminfo: {e}"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(host_memory_mib, reserved_memory_mib, cpus, max_vms)
    }

    pub fn new(
        host_memory_mib: u64,
        reserved_memory_mib: u64,
        cpus: usize,
        max_vms: usize,
    ) -> Result<Self, String> {
        if reserved_memory_mib >= host_memory_mib {
            return Err(format!(
                "reserved_memory_mib = {reserved_memory_mib} leaves nothing of the host's {host_memory_mib} MiB for VMs"
            ));
        }
        Ok(Self {
            host_memory_mib,
            reserved_memory_mib,
            cpus,
            max_vms: if max_vms == 0 { cpus } else { max_vms },
            vm_memory_budget_mib: host_memory_mib - reserved_memory_mib,
            pool_memory_mib: 0,
        })
    }

    /// Sets `pool_memory_mib` aside for warm pools (0: a quarter of the VMs'
    /// memory).
    pub fn with_pools(mut self, pool_memory_mib: u64, pools_enabled: bool) -> Self {
        let pool = if !pools_enabled {
            0
        } else if pool_memory_mib == 0 {
            self.vm_memory_budget_mib / 4
        } else {
            pool_memory_mib.min(self.vm_memory_budget_mib / 2)
        };
        self.pool_memory_mib = pool;
        self.vm_memory_budget_mib -= pool;
        self
    }

    /// How many VMs of `vm_memory_mib` fit at once.
    pub fn vms_of(&self, vm_memory_mib: u64) -> usize {
        let by_memory = self.vm_memory_budget_mib / vm_memory_mib.max(1);
        self.max_vms
            .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// As many requests as the queue holds are already waiting.
    QueueFull { retry_after_s: u64 },
    /// The request waited `queue_timeout` without getting capacity.
    QueueTimeout { retry_after_s: u64 },
    /// The VM alone is bigger than every VM together may be.
    TooLarge { vm_memory_mib: u32, budget_mib: u64 },
    /// There is no place now, and the request does not wait (a session).
    NoCapacity { retry_after_s: u64 },
    /// The server is shutting down.
    ShuttingDown,
}

impl Rejection {
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::QueueFull { .. } => ErrorCode::QueueFull,
            Rejection::QueueTimeout { .. } => ErrorCode::QueueTimeout,
            Rejection::TooLarge { .. } => ErrorCode::TooLarge,
            Rejection::NoCapacity { .. } => ErrorCode::NoCapacity,
            Rejection::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }

    /// Its code, as the metrics label rejections.
    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }
}

pub struct Admission {
    capacity: Capacity,
    slots: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    queue_size: usize,
    queue_timeout: Duration,
    waiting: AtomicUsize,
    /// Moving average of how long an admitted request holds its place, in
    /// milliseconds, for `Retry-After`.
    average_hold_ms: Arc<AtomicU64>,
}

/// A place among the running VMs, given back on drop.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    admitted: Instant,
    average_hold_ms: Arc<AtomicU64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = self.admitted.elapsed().as_millis() as u64;
        // An exponential moving average weighing the last request 1/4.
        let _ =
            self.average_hold_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                    Some((average * 3 + held) / 4)
                });
    }
}

impl Admission {
    pub fn new(capacity: Capacity, queue_size: usize, queue_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity.max_vms)),
            memory: Arc::new(Semaphore::new(
                usize::try_from(capacity.vm_memory_budget_mib).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            capacity,
            queue_size,
            queue_timeout,
            waiting: AtomicUsize::new(0),
            average_hold_ms: Arc::new(AtomicU64::new(10_000)),
        }
    }

    /// Places taken now: VMs, and their memory in MiB.
    pub fn in_use(&self) -> (usize, u64) {
        let budget =
            usize::try_from(self.capacity.vm_memory_budget_mib).unwrap_or(Semaphore::MAX_PERMITS);
        (
            self.capacity.max_vms - self.slots.available_permits(),
            (budget - self.memory.available_permits()) as u64,
        )
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Requests waiting for capacity now.
    pub fn queue_length(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a place for a VM of `vm_memory_mib`, in arrival order.
    /// `closing` completing (shutdown) ends the wait.
    pub async fn admit(
        &self,
        vm_memory_mib: u32,
        closing: impl Future<Output = ()>,
    ) -> Result<Permit, Rejection> {
        if u64::from(vm_memory_mib) > self.capacity.vm_memory_budget_mib {
            return Err(Rejection::TooLarge {
                vm_memory_mib,
                budget_mib: self.capacity.vm_memory_budget_mib,
            });
        }
        if let Some(permit) = self.try_admit(vm_memory_mib) {
            return Ok(permit);
        }
        // Count ourselves in the queue, unless it is full.
        let entered = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting < self.queue_size).then_some(waiting + 1)
            });
        if entered.is_err() {
            return Err(Rejection::QueueFull {
                retry_after_s: self.retry_after(),
            });
        }
        let _leave = Leave(&self.waiting);
        let acquire = async {
            let slot = self.slots.clone().acquire_owned().await;
            let memory = self.memory.clone().acquire_many_owned(vm_memory_mib).await;
            // The semaphores are never closed.
            (slot.expect("open"), memory.expect("open"))
        };
        tokio::select! {
            acquired = tokio::time::timeout(self.queue_timeout, acquire) => match acquired {
                Ok((slot, memory)) => Ok(self.permit(slot, memory)),
                Err(_) => Err(Rejection::QueueTimeout { retry_after_s: self.retry_after() }),
            },
            () = closing => Err(Rejection::ShuttingDown),
        }
    }

    /// A place for a VM of `vm_memory_mib` now, or a rejection: for work
    /// that holds its place long (a session), which must not wait in the
    /// queue of executions.
    pub fn admit_now(&self, vm_memory_mib: u32) -> Result<Permit, Rejection> {
        if u64::from(vm_memory_mib) > self.capacity.vm_memory_budget_mib {
            return Err(Rejection::TooLarge {
                vm_memory_mib,
                budget_mib: self.capacity.vm_memory_budget_mib,
            });
        }
        self.try_admit(vm_memory_mib)
            .ok_or_else(|| Rejection::NoCapacity {
                retry_after_s: self.retry_after(),
            })
    }

    fn try_admit(&self, vm_memory_mib: u32) -> Option<Permit> {
        // Someone waiting goes first.
        if self.queue_length() > 0 {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let memory = self
            .memory
            .clone()
            .try_acquire_many_owned(vm_memory_mib)
            .ok()?;
        Some(self.permit(slot, memory))
    }

    fn permit(&self, slot: OwnedSemaphorePermit, memory: OwnedSemaphorePermit) -> Permit {
        Permit {
            _slot: slot,
            _memory: memory,
            admitted: Instant::now(),
            average_hold_ms: self.average_hold_ms.clone(),
        }
    }

    /// Seconds until the queue has likely moved past a request arriving now.
    fn retry_after(&self) -> u64 {
        let average_s = self.average_hold_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let ahead = (self.queue_length() + 1) as f64;
        let slots = self.capacity.max_vms.max(1) as f64;
        ((average_s * ahead / slots).ceil() as u64).clamp(1, 600)
    }
}

/// Leaves the queue on drop, admitted or not (or the client gone).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_vms: usize, budget_mib: u64, queue: usize, timeout_ms: u64) -> Arc<Admission> {
        let capacity = Capacity::new(budget_mib + 100, 100, 2, max_vms).unwrap();
        Arc::new(Admission::new(
            capacity,
            queue,
            Duration::from_millis(timeout_ms),
        ))
    }

    #[test]
    fn capacity_is_memory_bounded_by_cpus() {
        // The seed's example: (32 GB - 2 GB) / 512 MB = 60 VMs, if there are
        // CPUs for them.
        let seed = Capacity::new(32 << 10, 2 << 10, 96, 0).unwrap();
        assert_eq!(seed.vms_of(512), 60);
        let few_cpus = Capacity::new(32 << 10, 2 << 10, 2, 0).unwrap();
        assert_eq!(few_cpus.vms_of(512), 2);
        assert!(Capacity::new(1024, 1024, 2, 0).is_err());
    }

    #[tokio::test]
    async fn full_queue_and_timeout_are_rejections() {
        let admission = admission(1, 1000, 1, 50);
        let first = admission.admit(500, std::future::pending()).await.unwrap();
        // The second waits (queue of one) and times out; while it waits, a
        // third finds the queue full.
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(500, std::future::pending()).await.err() })
        };
        while admission.queue_length() == 0 {
            tokio::task::yield_now().await;
        }
        let third = admission.admit(500, std::future::pending()).await.err();
        assert_eq!(third.map(|r| r.reason()), Some("queue_full"));
        let second = waiting.await.unwrap();
        assert_eq!(second.map(|r| r.reason()), Some("queue_timeout"));
        assert_eq!(admission.queue_length(), 0);
        drop(first);
        assert!(admission.admit(500, std::future::pending()).await.is_ok());
    }

    #[tokio::test]
    async fn memory_is_shared_by_size() {
        let admission = admission(4, 1000, 4, 50);
        let a = admission.admit(600, std::future::pending()).await.unwrap();
        // A slot is free but not the memory.
        let b = admission.admit(600, std::future::pending()).await.err();
        assert_eq!(b.map(|r| r.reason()), Some("queue_timeout"));
        let c = admission.admit(400, std::future::pending()).await;
        assert!(c.is_ok());
        let too_big = admission.admit(1001, std::future::pending()).await.err();
        assert_eq!(too_big.map(|r| r.reason()), Some("too_large"));
        drop(a);
    }

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_a_place_frees() {
        let admission = admission(1, 1000, 1, 5_000);
        let first = admission.admit(100, std::future::pending()).await.unwrap();
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(100, std::future::pending()).await.is_ok() })
        };
        while admission.queue_length() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn admit_now_does_not_wait() {
        let admission = admission(1, 1000, 4, 5_000);
        let session = admission.admit_now(500).unwrap();
        let second = admission.admit_now(100).err();
        assert!(matches!(second, Some(Rejection::NoCapacity { .. })));
        let too_big = admission.admit_now(2000).err();
        assert_eq!(too_big.map(|r| r.reason()), Some("too_large"));
        drop(session);
        assert!(admission.admit_now(100).is_ok());
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let admission = admission(1, 1000, 1, 5_000);
        let _first = admission.admit(100, std::future::pending()).await.unwrap();
        let r = admission.admit(100, std::future::ready(())).await.err();
        assert_eq!(r, Some(Rejection::ShuttingDown));
    }
}
