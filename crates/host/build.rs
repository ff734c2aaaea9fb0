//! Embeds two things into the host library:
//! - the language table, one TOML file per language under `languages/`;
//! - the guest agent, built here as a static binary. It must be static (it is
//!   PID 1 of an initramfs with no libc), and the toolchain only has the gnu
//!   target, so it is built with `+crt-static` for an explicit `--target`,
//!   which keeps that flag away from build scripts and proc-macros.
//!   `RUNNER_AGENT_BIN` names a prebuilt agent instead.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    languages(&root, &out_dir);
    agent(&root, &out_dir);
}

fn languages(root: &Path, out_dir: &Path) {
    let dir = root.join("languages");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut code = String::from("pub(crate) const LANGUAGE_FILES: &[(&str, &str)] = &[\n");
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        code += &format!(
            "    ({:?}, include_str!({:?})),\n",
            file.file_name().unwrap().to_str().unwrap(),
            file.display().to_string()
        );
    }
    code += "];\n";
    fs::write(out_dir.join("languages.rs"), code).unwrap();
}

fn agent(root: &Path, out_dir: &Path) {
    let dest = out_dir.join("runner-agent");
    println!("cargo:rerun-if-env-changed=RUNNER_AGENT_BIN");
    if let Some(prebuilt) = env::var_os("RUNNER_AGENT_BIN") {
        fs::copy(&prebuilt, &dest).expect("copy RUNNER_AGENT_BIN");
        return;
    }
    for path in [
        "crates/agent/src",
        "crates/agent/Cargo.toml",
        "crates/protocol/src",
        "crates/protocol/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    // A target directory of its own: the outer build holds the lock on its.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("agent");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "runner-agent",
            "--profile",
            "agent",
        ])
        .args(["--target", AGENT_TARGET])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Source paths remapped so that every checkout builds the same agent
        // and shares one initramfs image.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "-Ctarget-feature=+crt-static\x1f--remap-path-prefix={}=/runner",
                root.display()
            ),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build the guest agent");
    assert!(status.success(), "building the guest agent failed");
    let built = target_dir
        .join(AGENT_TARGET)
        .join("agent")
        .join("runner-agent");
    fs::copy(&built, &dest).expect("copy the built guest agent");
}
