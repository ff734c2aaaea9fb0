//! One root filesystem per language: Debian's Essential packages plus the
//! language's own, trimmed, with an unprivileged `runner` user, written as an
//! ext4 image by `mkfs.ext4 -d` (no loop mount, no root needed for it).
//!
//! The guest mounts it read-only under a tmpfs overlay, so one image serves
//! every VM of the language and is never modified.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::{DebianSource, ImageError, Progress, dir_size, require_space, require_tool, run};
use crate::lang::Language;

pub const FILE: &str = "rootfs.ext4";

/// Left out at unpack time by dpkg, so they never take space: the seed's
/// "no docs, man pages, locales".
const EXCLUDED: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
];

/// Made empty before the install, although their contents are excluded:
/// `update-alternatives` (the JDK's, for one) fails when it cannot link a
/// man page there, as in Debian's slim container images.
const KEPT_DIRS: &[&str] = &["/usr/share/man/man1"];

/// Removed after the install: package lists, caches and logs.
const TRIMMED: &[&str] = &[
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
];

/// The user programs run as. The agent uses the numbers; the names are for
/// programs that look themselves up.
const PASSWD_LINE: &str = "runner:x:1000:1000:Runner Codes:/home/runner:/bin/sh\n";
const GROUP_LINE: &str = "runner:x:1000:\n";

/// Files written over whatever the packages (or mmdebstrap, which copies
/// the build machine's `/etc/hostname` and `/etc/resolv.conf`) left: the
/// guest's name, localhost as on any Debian machine, and no name server,
/// since the VM has no network.
fn etc_files() -> [(&'static str, String); 3] {
    let name = runner_protocol::GUEST_HOSTNAME;
    [
        ("etc/hostname", format!("{name}\n")),
        (
            "etc/hosts",
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n\
                 ::1\t\tlocalhost ip6-localhost ip6-loopback\n\
                 ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
            ),
        ),
        (
            "etc/resolv.conf",
            "# No name server: this VM has no network (see Runner Codes' README).\n".into(),
        ),
    ]
}

#[derive(Serialize)]
struct Recipe<'a> {
    suite: &'a str,
    variant: &'a str,
    packages: &'a [String],
    excluded: &'a [&'a str],
    kept_dirs: &'a [&'a str],
    trimmed: &'a [&'a str],
    passwd: &'a str,
    etc: [(&'static str, String); 3],
    version_command: &'a [String],
    env: &'a BTreeMap<String, String>,
    prepare: &'a Option<String>,
}

pub(super) fn recipe<'a>(source: &'a DebianSource, language: &'a Language) -> impl Serialize + 'a {
    Recipe {
        suite: &source.suite,
        variant: "essential",
        packages: &language.packages,
        excluded: EXCLUDED,
        kept_dirs: KEPT_DIRS,
        trimmed: TRIMMED,
        passwd: PASSWD_LINE,
        etc: etc_files(),
        version_command: &language.version,
        env: &language.env,
        prepare: &language.prepare,
    }
}

pub(super) fn build(
    source: &DebianSource,
    language: &Language,
    out: &Path,
    progress: &dyn Progress,
) -> Result<String, ImageError> {
    require_tool("mmdebstrap", "mmdebstrap")?;
    require_tool("mkfs.ext4", "e2fsprogs")?;
    require_space(out, 2048)?;
    let tree = out.join("tree");
    let packages = language.packages.join(",");
    progress.step(&format!(
        "installing Debian {} {} into the {} root filesystem",
        source.suite,
        if packages.is_empty() {
            "base"
        } else {
            &packages
        },
        language.name
    ));
    let mut command = Command::new("mmdebstrap");
    command.args(["--variant=essential", "--format=directory", "--quiet"]);
    if !packages.is_empty() {
        command.arg(format!("--include={packages}"));
    }
    for pattern in EXCLUDED {
        command.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    for dir in KEPT_DIRS {
        command.arg(format!("--setup-hook=mkdir -p \"$1{dir}\""));
    }
    command
        .arg("--aptopt=Acquire::Languages \"none\"")
        .arg(&source.suite)
        .arg(&tree)
        .arg(source.mirror()?);
    run(&mut command)?;

    progress.step(&format!("trimming the {} root filesystem", language.name));
    for dir in TRIMMED {
        let path = tree.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(ImageError::io("remove", &path))?;
            fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        }
    }
    append(&tree.join("etc/passwd"), PASSWD_LINE)?;
    append(&tree.join("etc/group"), GROUP_LINE)?;
    for (file, text) in etc_files() {
        let path = tree.join(file);
        // Replace a link (resolv.conf may be one) rather than write through it.
        let _ = fs::remove_file(&path);
        fs::write(&path, text).map_err(ImageError::io("write", &path))?;
    }
    for dir in ["home", "sys/fs/cgroup", "dev/shm"] {
        let path = tree.join(dir);
        fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
    }

    if let Some(prepare) = &language.prepare {
        progress.step(&format!(
            "preparing the {} root filesystem: {prepare}",
            language.name
        ));
        run(&mut in_chroot(
            &tree,
            language,
            &["/bin/sh", "-ec", prepare],
        ))?;
    }
    let version = run(&mut in_chroot(&tree, language, &language.version))?
        .trim()
        .to_string();

    progress.step(&format!("writing {FILE} for {}", language.name));
    make_ext4(&tree, &out.join(FILE))?;
    fs::remove_dir_all(&tree).map_err(ImageError::io("remove", &tree))?;
    Ok(version)
}

/// A command in the root filesystem, as root, with the language's
/// environment (as the stages will have it).
fn in_chroot<S: AsRef<std::ffi::OsStr>>(tree: &Path, language: &Language, argv: &[S]) -> Command {
    let mut command = Command::new("chroot");
    command
        .arg(tree)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/root")
        .envs(&language.env);
    command
}

fn append(path: &Path, line: &str) -> Result<(), ImageError> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(ImageError::io("open", path))?;
    file.write_all(line.as_bytes())
        .map_err(ImageError::io("write", path))
}

/// An ext4 image just big enough for `tree`: no journal (it is mounted
/// read-only), no reserved blocks.
fn make_ext4(tree: &Path, image: &Path) -> Result<(), ImageError> {
    let bytes = dir_size(tree);
    let inodes = count_inodes(tree) * 5 / 4 + 1024;
    // Room for ext4's own metadata (inode tables: 256 bytes each), block
    // rounding of small files and directories.
    let size_kib = (bytes / 1024) * 5 / 4 + inodes * 4 / 4 + 16 * 1024;
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "runner-root",
            "-m",
            "0",
            "-O",
            "^has_journal",
        ])
        .args(["-E", "root_owner=0:0", "-N", &inodes.to_string(), "-d"])
        .arg(tree)
        .arg(image)
        .arg(format!("{size_kib}K")))?;
    Ok(())
}

fn count_inodes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 1;
    };
    1 + entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_inodes(&e.path()),
            _ => 1,
        })
        .sum::<u64>()
}
