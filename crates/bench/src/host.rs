//! The floor: the same program run directly on the host, with the very same
//! interpreter or compiler binaries, in a chroot of the language's root
//! filesystem. Only the VM differs.
//!
//! Each run gets what a VM gets: a fresh copy-on-write overlay over the
//! read-only image (so a compiler's cache starts as the image has it), a
//! tmpfs home and /tmp, /proc and /dev, the run user, and the language's
//! environment. All of it lives in a private mount namespace (`unshare`),
//! which the kernel tears down when the run ends: nothing stays mounted,
//! and the loop device frees itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use runner_host::lang::Language;

/// One run on the host.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub compile_ms: Option<f64>,
    pub run_ms: f64,
    pub exit_code: i32,
    pub stdout: Vec<u8>,
}

/// Why the host baseline cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the host baseline needs root (loop mounts and chroot)".into());
    }
    for tool in ["unshare", "chroot", "mount"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "the host baseline needs {tool} (util-linux, coreutils)"
            ));
        }
    }
    None
}

/// Runs `source` (with `args`) `iterations` times in a chroot of `rootfs`,
/// each time in a fresh overlay, and times the compile and run commands.
pub fn run(
    rootfs: &Path,
    language: &Language,
    source: &str,
    args: &[String],
    iterations: usize,
) -> anyhow::Result<Vec<HostRun>> {
    let dir = tempfile::Builder::new()
        .prefix("runner-bench-host.")
        .tempdir()
        .context("make a directory for the host baseline")?;
    for sub in ["src", "lower", "scratch", "out"] {
        fs::create_dir(dir.path().join(sub))?;
    }
    fs::write(dir.path().join("src").join(&language.source_file), source)?;

    let mut env = BTreeMap::from([
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/home/runner"),
        ("USER", "runner"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]);
    for (key, value) in &language.env {
        env.insert(key, value);
    }
    let in_chroot = |argv: &[String]| {
        let mut line = String::from("chroot --userspec=1000:1000 \"$R\" /usr/bin/env -i");
        for (key, value) in &env {
            let _ = write!(line, " {}", quote(&format!("{key}={value}")));
        }
        line += " /bin/sh -c 'cd /home/runner && exec \"$@\"' sh";
        for arg in argv {
            let _ = write!(line, " {}", quote(arg));
        }
        line
    };
    let compile = match &language.compile {
        Some(argv) => format!(
            "{} </dev/null >\"$D/out/compile$i\" 2>&1 || {{ echo \"compile-failed $i\"; exit 1; }}",
            in_chroot(argv)
        ),
        None => ":".into(),
    };
    let mut run_argv = language.run.clone();
    run_argv.extend(args.iter().cloned());
    let run = format!(
        "{} </dev/null >\"$D/out/out$i\" 2>\"$D/out/err$i\"",
        in_chroot(&run_argv)
    );
    let script = format!(
        r#"set -u
D={dir}
fail() {{ echo "error: $*"; exit 1; }}
mount -o ro,loop {rootfs} "$D/lower" || fail "loop-mount the root filesystem"
mount -t tmpfs tmpfs "$D/scratch" || fail "mount a tmpfs"
i=0
while [ $i -lt {iterations} ]; do
    i=$((i + 1))
    U="$D/scratch/$i"
    R="$U/root"
    mkdir -p "$U/up" "$U/work" "$R"
    mount -t overlay overlay -o "lowerdir=$D/lower,upperdir=$U/up,workdir=$U/work" "$R" || fail "mount an overlay"
    mkdir -p "$R/home/runner" "$R/tmp" "$R/proc" "$R/dev"
    mount -t tmpfs -o uid=1000,gid=1000,mode=0755 tmpfs "$R/home/runner" || fail "mount home"
    mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || fail "mount /tmp"
    mount -t proc proc "$R/proc" || fail "mount /proc"
    mount --rbind /dev "$R/dev" || fail "bind /dev"
    cp -R "$D/src/." "$R/home/runner/" && chown -R 1000:1000 "$R/home/runner" || fail "copy the sources"
    t0=$(date +%s%N)
    {compile}
    t1=$(date +%s%N)
    {run}
    code=$?
    t2=$(date +%s%N)
    echo "sample $i $t0 $t1 $t2 $code"
    umount -R "$R" 2>/dev/null
    rm -rf "$U"
done
"#,
        dir = quote(&dir.path().to_string_lossy()),
        rootfs = quote(&rootfs.to_string_lossy()),
    );
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .context("run unshare for the host baseline")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut runs = Vec::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["sample", i, t0, t1, t2, code] => {
                let ns = |s: &str| s.parse::<u64>().unwrap_or(0);
                let (t0, t1, t2) = (ns(t0), ns(t1), ns(t2));
                runs.push(HostRun {
                    compile_ms: language
                        .compile
                        .as_ref()
                        .map(|_| t1.saturating_sub(t0) as f64 / 1e6),
                    run_ms: t2.saturating_sub(t1) as f64 / 1e6,
                    exit_code: code.parse().unwrap_or(-1),
                    stdout: fs::read(dir.path().join("out").join(format!("out{i}")))
                        .unwrap_or_default(),
                });
            }
            ["compile-failed", i] => {
                let log = fs::read_to_string(dir.path().join("out").join(format!("compile{i}")))
                    .unwrap_or_default();
                bail!("compiling on the host failed:\n{log}");
            }
            _ => {}
        }
    }
    if runs.len() != iterations {
        bail!(
            "the host baseline stopped after {} of {iterations} runs: {}{}",
            runs.len(),
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(runs)
}

/// `value` as one shell word.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn shell_words_survive_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
