//! Image management on the real state directory.

mod common;

use common::{runner, state_dir};

#[test]
fn prune_removes_only_images_no_recipe_uses() {
    let images = state_dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // An image of a recipe that no longer exists.
    let stale = images.join("rootfs-bash-0000000000000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("manifest.json"), "{}").unwrap();
    std::fs::write(stale.join("rootfs.ext4"), "old").unwrap();

    let output = runner().args(["image", "prune"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
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
