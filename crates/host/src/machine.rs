//! Facts about the host machine that sizing and reports need.

/// The host's memory (`MemTotal`), in MiB.
pub fn host_memory_mib() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib / 1024)
        .ok_or_else(|| std::io::Error::other("no MemTotal line"))
}
