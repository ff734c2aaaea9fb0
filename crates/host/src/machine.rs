//! Facts about the host machine that sizing, snapshots and reports need.

/// The host's memory (`MemTotal`), in MiB.
pub fn host_memory_mib() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    kib_field(&meminfo, "MemTotal:")
        .map(|kib| kib / 1024)
        .ok_or_else(|| std::io::Error::other("no MemTotal line"))
}

/// The value of a `Name:   1234 kB` line of a /proc file (meminfo,
/// smaps_rollup, status), in KiB.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What a KVM guest with `-cpu host` sees of this machine's CPU: its model
/// and a digest of its feature flags, from `/proc/cpuinfo`. A snapshot made
/// with `-cpu host` holds that CPU's state and must only be restored on the
/// same kind of CPU, so its key carries this.
pub fn host_cpu_signature() -> &'static str {
    static SIGNATURE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        cpu_signature(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    });
    &SIGNATURE
}

fn cpu_signature(cpuinfo: &str) -> String {
    use sha2::Digest as _;
    // The first processor's block; the others are alike.
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map_or("", |(_, value)| value.trim())
    };
    let flags = hex::encode(sha2::Sha256::digest(field("flags").as_bytes()));
    format!("{} flags-sha256:{}", field("model name"), &flags[..16])
}

#[cfg(test)]
mod tests {
    use super::{cpu_signature, kib_field};

    #[test]
    fn cpu_signatures_tell_cpu_models_and_features_apart() {
        let a =
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\n";
        let sig = cpu_signature(a);
        assert!(sig.starts_with("AMD EPYC flags-sha256:"), "{sig}");
        assert_eq!(sig, cpu_signature(a));
        assert_ne!(sig, cpu_signature(&a.replace("avx2", "avx512f")));
        assert_ne!(sig, cpu_signature(&a.replace("AMD EPYC", "Intel Xeon")));
    }

    #[test]
    fn kib_fields_are_read_by_name() {
        let meminfo = "MemTotal:       24683520 kB\nMemFree:         1000 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(24_683_520));
        assert_eq!(kib_field(meminfo, "MemFree:"), Some(1000));
        assert_eq!(kib_field(meminfo, "Pss:"), None);
    }
}
