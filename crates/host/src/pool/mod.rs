//! Warm pools: VMs restored from their language's snapshot ahead of
//! requests, made unique, then paused until an execution takes one. This
//! room holds them; tending them is work done ahead of requests (the
//! engine's `prepare` room).
//!
//! A pooled VM is used once and destroyed, like any other. The pool of a
//! language grows with its recent demand and shrinks back when it is idle,
//! between `min_size` and `max_size`, and all pools together stay within
//! `memory_mib`. A VM that waited longer than `max_idle` is recycled, and one
//! whose VMM died is dropped; both are replaced by the refill task, which
//! the runner starts with its pools.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::vmm::Vm;

/// The seed's `WarmPool`, with autoscaling bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Languages with a pool; empty for every language that has a snapshot.
    pub languages: Vec<String>,
    /// VMs kept ready per language even when idle.
    pub min_size: usize,
    /// VMs kept ready per language at the most.
    pub max_size: usize,
    /// How often the pools are checked and refilled (also after every take).
    pub refill_interval_ms: u64,
    /// A VM that waited this long is recycled.
    pub max_idle_ms: u64,
    /// Memory of all pooled VMs together; 0 for a quarter of what the
    /// server allows all VMs.
    pub memory_mib: u64,
    /// Under TCG, run the language's `warm` program in each pooled VM
    /// after its restore, in a process of its own, before it is paused:
    /// QEMU's translation cache starts empty in every new QEMU process, and
    /// this fills it with the runtime's hot paths before a request waits
    /// on them. Nothing to fill under KVM, where it is skipped.
    pub warm_up: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            languages: Vec::new(),
            min_size: 0,
            max_size: 2,
            refill_interval_ms: 1_000,
            max_idle_ms: 600_000,
            memory_mib: 0,
            warm_up: true,
        }
    }
}

/// How far back demand counts.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// Requests per window that earn one more pooled VM.
const REQUESTS_PER_VM: usize = 6;

pub struct Pooled {
    pub vm: Box<dyn Vm>,
    pub language: String,
    pub memory_mib: u32,
    pub created: Instant,
}

pub struct Pools {
    pub(crate) config: PoolConfig,
    /// Budget for all pooled VMs, resolved.
    memory_mib: u64,
    inner: Mutex<Inner>,
    /// Wakes the refill task early: a VM was taken.
    pub(crate) wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    idle: HashMap<String, VecDeque<Pooled>>,
    demand: HashMap<String, VecDeque<Instant>>,
    /// VMs being restored for a pool now.
    filling: HashMap<String, usize>,
    filling_mib: u64,
}

impl Inner {
    /// VMs of `language` waiting or being restored.
    fn have(&self, language: &str) -> usize {
        self.idle.get(language).map_or(0, VecDeque::len)
            + self.filling.get(language).copied().unwrap_or(0)
    }
}

impl Pools {
    pub fn new(config: PoolConfig, memory_mib: u64) -> Self {
        Self {
            config,
            memory_mib,
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A ready VM of `language` with at least `memory_mib`, if one waits.
    /// Counts the request as demand either way.
    pub fn take(&self, language: &str, memory_mib: u32) -> Option<Pooled> {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        inner
            .demand
            .entry(language.to_string())
            .or_default()
            .push_back(now);
        let idle = inner.idle.get_mut(language)?;
        let index = idle.iter().position(|p| p.memory_mib >= memory_mib)?;
        let pooled = idle.remove(index);
        drop(inner);
        self.wake.notify_one();
        pooled
    }

    /// VMs waiting in `language`'s pool.
    pub fn size(&self, language: &str) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.idle.get(language).map_or(0, VecDeque::len)
    }

    /// How many VMs `language`'s pool should hold now.
    pub fn target(&self, language: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let demand = inner.demand.entry(language.to_string()).or_default();
        while demand.front().is_some_and(|t| t.elapsed() > DEMAND_WINDOW) {
            demand.pop_front();
        }
        let wanted = self.config.min_size + demand.len().div_ceil(REQUESTS_PER_VM);
        wanted.clamp(
            self.config.min_size,
            self.config.max_size.max(self.config.min_size),
        )
    }

    /// Takes out the VMs that should not be handed out any more: dead, or
    /// waiting for longer than `max_idle`. The caller destroys them.
    pub fn stale(&self) -> Vec<Pooled> {
        let max_idle = Duration::from_millis(self.config.max_idle_ms);
        let mut inner = self.inner.lock().unwrap();
        let mut stale = Vec::new();
        for idle in inner.idle.values_mut() {
            let mut keep = VecDeque::with_capacity(idle.len());
            for mut pooled in idle.drain(..) {
                if pooled.created.elapsed() > max_idle || !pooled.vm.is_alive() {
                    stale.push(pooled);
                } else {
                    keep.push_back(pooled);
                }
            }
            *idle = keep;
        }
        stale
    }

    /// Takes out the VMs of `language` beyond its target (demand fell off):
    /// the pool shrinks when idle. The caller destroys them.
    pub fn surplus(&self, language: &str) -> Vec<Pooled> {
        let target = self.target(language);
        let mut inner = self.inner.lock().unwrap();
        let Some(idle) = inner.idle.get_mut(language) else {
            return Vec::new();
        };
        let keep = target.min(idle.len());
        idle.drain(keep..).collect()
    }

    /// Reserves room for one more VM of `language` if its pool is under
    /// target and the memory allows; the caller then restores one and
    /// [`Pools::put`]s it (or [`Pools::unreserve`]s on failure).
    pub fn reserve(&self, language: &str, memory_mib: u32) -> bool {
        let target = self.target(language);
        let mut inner = self.inner.lock().unwrap();
        let have = inner.have(language);
        let used: u64 = inner
            .idle
            .values()
            .flatten()
            .map(|p| u64::from(p.memory_mib))
            .sum::<u64>()
            + inner.filling_mib;
        if have >= target || used + u64::from(memory_mib) > self.memory_mib {
            return false;
        }
        *inner.filling.entry(language.to_string()).or_default() += 1;
        inner.filling_mib += u64::from(memory_mib);
        true
    }

    /// Whether `language`'s pool, counting VMs being restored, holds fewer
    /// than its target: when it does not, there is nothing to fill.
    pub fn below_target(&self, language: &str) -> bool {
        let target = self.target(language);
        self.inner.lock().unwrap().have(language) < target
    }

    pub fn unreserve(&self, language: &str, memory_mib: u32) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(n) = inner.filling.get_mut(language) {
            *n = n.saturating_sub(1);
        }
        inner.filling_mib = inner.filling_mib.saturating_sub(u64::from(memory_mib));
    }

    pub fn put(&self, pooled: Pooled) {
        self.unreserve(&pooled.language, pooled.memory_mib);
        let mut inner = self.inner.lock().unwrap();
        inner
            .idle
            .entry(pooled.language.clone())
            .or_default()
            .push_back(pooled);
    }

    /// Every waiting VM, for shutdown.
    pub fn drain(&self) -> Vec<Pooled> {
        let mut inner = self.inner.lock().unwrap();
        inner.idle.drain().flat_map(|(_, idle)| idle).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_follows_demand_within_bounds() {
        let config = PoolConfig {
            min_size: 1,
            max_size: 3,
            ..PoolConfig::default()
        };
        let pools = Pools::new(config, 10_000);
        assert_eq!(pools.target("python"), 1, "idle: the minimum");
        for _ in 0..6 {
            assert!(pools.take("python", 100).is_none());
        }
        assert_eq!(pools.target("python"), 2);
        for _ in 0..100 {
            pools.take("python", 100);
        }
        assert_eq!(pools.target("python"), 3, "never past the maximum");
        assert_eq!(pools.target("bash"), 1, "per language");
    }

    #[test]
    fn reservations_respect_target_and_memory() {
        let config = PoolConfig {
            min_size: 2,
            max_size: 2,
            ..PoolConfig::default()
        };
        let pools = Pools::new(config, 1000);
        assert!(pools.reserve("python", 576));
        assert!(!pools.reserve("python", 576), "over the memory budget");
        assert!(pools.reserve("bash", 320));
        assert!(!pools.reserve("bash", 320), "over the memory budget");
        pools.unreserve("python", 576);
        assert!(pools.below_target("bash"));
        assert!(pools.reserve("bash", 320));
        assert!(!pools.reserve("bash", 320), "at target");
        assert!(!pools.below_target("bash"), "restoring ones count");
        assert!(pools.below_target("python"));
    }
}
