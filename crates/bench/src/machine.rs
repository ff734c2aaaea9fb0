//! The machine a report was measured on: numbers mean little without it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use runner_host::machine::kib_field;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub host_kernel: String,
    /// e.g. "qemu QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)".
    pub backend: String,
    /// "kvm" or "tcg".
    pub accel: String,
    /// Why that acceleration was chosen.
    pub accel_reason: String,
    pub guest_kernel: String,
    /// Each language's version, as found in its image.
    pub languages: BTreeMap<String, String>,
    pub runner_version: String,
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "unknown".into(), |(_, model)| model.trim().to_string())
}

pub fn memory_mib() -> u64 {
    runner_host::machine::host_memory_mib().unwrap_or(0)
}

pub fn host_kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// The kernel release recorded in a kernel image's manifest.
pub fn guest_kernel(kernel_dir: &Path) -> String {
    fs::read(kernel_dir.join("manifest.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|manifest| manifest["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Resident and proportional memory of one process, in MiB.
pub fn process_memory_mib(pid: u32) -> Option<(f64, f64)> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mib = |name| kib_field(&rollup, name).map(|kib| kib as f64 / 1024.0);
    Some((mib("Rss:")?, mib("Pss:")?))
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}
