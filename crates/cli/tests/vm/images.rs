//! Image management on the real state directory.

use crate::common::{runner, state_dir, succeeds};

#[test]
fn prune_removes_only_images_no_recipe_uses() {
    // Prunes the images every other test uses: none runs meanwhile.
    crate::common::alone();
    let images = state_dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // An image of a recipe that no longer exists.
    let stale = images.join("rootfs-bash-0000000000000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("manifest.json"), "{}").unwrap();
    std::fs::write(stale.join("rootfs.ext4"), "old").unwrap();

    let stdout = succeeds(runner().args(["image", "prune"]));
    assert!(
        stdout.contains("removed rootfs-bash-0000000000000000"),
        "{stdout}"
    );
    assert!(!stale.exists());

    // Whatever `doctor` reports as built is still there.
    let doctor = runner().arg("doctor").output().unwrap();
    for line in String::from_utf8_lossy(&doctor.stdout).lines() {
        if let Some(rest) = line.strip_prefix("image          ") {
            let (id, state) = rest.split_once(' ').unwrap();
            if state == "built" {
                assert!(
                    images.join(id).join("manifest.json").exists(),
                    "{id} was pruned"
                );
            }
        }
    }
}

#[test]
fn doctor_reports_where_vms_run_and_the_hosts_numa_and_huge_pages() {
    let doctor = runner()
        .args(["doctor", "--set", "pool_cpus=0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    let line = |key: &str| crate::common::doctor_line(&stdout, key);
    let cpus = line("cpus");
    assert!(
        cpus.starts_with("executions on ") && cpus.contains("warm pools on 0 ("),
        "{cpus}"
    );
    let nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("node")
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    let numa = line("numa");
    match nodes {
        0 => assert!(numa.starts_with("the kernel lists no nodes"), "{numa}"),
        n => assert!(numa.starts_with(&format!("{n} node")), "{numa}"),
    }
    assert!(!line("huge pages").is_empty());
    let off = runner()
        .args([
            "doctor",
            "--set",
            "huge_pages=off",
            "--set",
            "numa_bind=false",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&off.stdout);
    for expected in [
        "not bound (numa_bind = false)",
        "huge pages     off (huge_pages)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in {stdout}");
    }
    // A CPU this process may not use is refused before anything runs.
    let refused = runner()
        .args(["doctor", "--set", "vm_cpus=1000"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("vm_cpus") && stderr.contains("CPU 1000"),
        "{stderr}"
    );
}
