//! Runner Codes' own kernel (`kernel = "runner"`): Linux from Debian's
//! `linux-source-6.12` package, configured as `runner.config` over
//! `make tinyconfig`, compiled here, stripped.
//!
//! The recipe names the source package's version, the compiler and the
//! configuration, so a new Debian kernel release, a new compiler or a
//! changed option builds a new kernel (once; it is cached like every
//! image). Both are looked up once per process.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Serialize;

use super::{MODULE_ORDER, VMLINUX};
use crate::image::{ImageError, Progress, require_space, require_tool, run};

/// Debian's package of the kernel source, and the tarball it installs.
pub const PACKAGE: &str = "linux-source-6.12";
const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Every Debian package the build needs, for the message when one is
/// missing.
pub const BUILD_PACKAGES: &str = "linux-source-6.12 build-essential bc bison flex libelf-dev";

/// The options, and those the debug flavour adds.
pub const CONFIG: &str = include_str!("runner.config");
pub const DEBUG_CONFIG: &str = include_str!("debug.config");
/// The configuration the build used, kept beside the kernel.
const CONFIG_FILE: &str = "config";

#[derive(Debug, Clone, Serialize)]
struct Recipe {
    package: &'static str,
    version: String,
    compiler: String,
    config: String,
}

/// The source package's version and the compiler, found once.
static TOOLCHAIN: Mutex<Option<(String, String)>> = Mutex::new(None);

fn toolchain() -> Result<(String, String), ImageError> {
    let mut known = TOOLCHAIN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(toolchain) = &*known {
        return Ok(toolchain.clone());
    }
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status} ${Version}", PACKAGE])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.strip_prefix("installed ").map(str::to_string)
        })
        .filter(|_| Path::new(TARBALL).is_file())
        .ok_or(ImageError::MissingKernelSource {
            package: PACKAGE,
            packages: BUILD_PACKAGES,
        })?;
    let compiler = Command::new("gcc")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .ok_or(ImageError::MissingTool {
            tool: "gcc",
            package: "build-essential",
        })?;
    *known = Some((version, compiler));
    Ok(known.clone().expect("just set"))
}

/// Whether `recipe` (a built kernel's) has the flavour's options.
pub(super) fn same_options(debug: bool, recipe: &serde_json::Value) -> bool {
    recipe["package"] == PACKAGE && recipe["config"] == fragment(debug).as_str()
}

/// The configuration fragment of a flavour.
fn fragment(debug: bool) -> String {
    if debug {
        format!("{CONFIG}\n{DEBUG_CONFIG}")
    } else {
        CONFIG.to_string()
    }
}

pub(super) fn recipe(debug: bool) -> Result<impl Serialize, ImageError> {
    let (version, compiler) = toolchain()?;
    Ok(Recipe {
        package: PACKAGE,
        version,
        compiler,
        config: fragment(debug),
    })
}

pub(super) fn build(
    debug: bool,
    out: &Path,
    progress: &dyn Progress,
) -> Result<String, ImageError> {
    for (tool, package) in [
        ("make", "make"),
        ("gcc", "build-essential"),
        ("bc", "bc"),
        ("bison", "bison"),
        ("flex", "flex"),
        ("strip", "binutils"),
        ("xz", "xz-utils"),
    ] {
        require_tool(tool, package)?;
    }
    // objtool, which the x86 build runs on every object, reads ELF with
    // libelf.
    if !Path::new("/usr/include/gelf.h").is_file() {
        return Err(ImageError::MissingTool {
            tool: "gelf.h",
            package: "libelf-dev",
        });
    }
    // The unpacked source (~1.5 GB) and its objects.
    require_space(out, 2560)?;
    let (version, _) = toolchain()?;

    progress.step(&format!("unpacking {PACKAGE} {version}"));
    let src = out.join("src");
    fs::create_dir_all(&src).map_err(ImageError::io("create", &src))?;
    run(Command::new("tar")
        .args(["-xJf", TARBALL, "--strip-components=1", "-C"])
        .arg(&src))?;

    progress.step("configuring the kernel (tinyconfig + runner.config)");
    let fragment = fragment(debug);
    let fragment_path = out.join("fragment.config");
    fs::write(&fragment_path, &fragment).map_err(ImageError::io("write", &fragment_path))?;
    run(make(&src).arg("tinyconfig"))?;
    run(Command::new("scripts/kconfig/merge_config.sh")
        .current_dir(&src)
        .args(["-m", ".config"])
        .arg(&fragment_path))?;
    run(make(&src).arg("olddefconfig"))?;
    let config_path = src.join(".config");
    let config = fs::read_to_string(&config_path).map_err(ImageError::io("read", &config_path))?;
    let lost = lost_options(&fragment, &config);
    if !lost.is_empty() {
        return Err(ImageError::Invalid(format!(
            "the kernel configuration lost options of runner.config (their dependencies \
             are off): {}",
            lost.join(", ")
        )));
    }
    let release = run(make(&src).args(["-s", "kernelrelease"]))?
        .trim()
        .to_string();

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let what = format!("compiling Linux {release} on {jobs} CPU(s)");
    progress.step(&what);
    compile(
        make(&src).arg(format!("-j{jobs}")).arg("vmlinux"),
        |files| progress.step(&format!("{what}: {files} files")),
    )?;

    // Symbols and debug sections are for debuggers; the ELF notes PVH boots
    // through stay.
    let vmlinux = out.join(VMLINUX);
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&vmlinux)
        .arg(src.join("vmlinux")))?;
    let kept = out.join(CONFIG_FILE);
    fs::write(&kept, &config).map_err(ImageError::io("write", &kept))?;
    let order = out.join(MODULE_ORDER);
    fs::write(&order, "").map_err(ImageError::io("write", &order))?;
    fs::remove_file(&fragment_path).map_err(ImageError::io("remove", &fragment_path))?;
    fs::remove_dir_all(&src).map_err(ImageError::io("remove", &src))?;
    let flavour = if debug { ", debug" } else { "" };
    Ok(format!("{release} ({PACKAGE} {version}{flavour})"))
}

/// `make` in the source tree, its output the same from one build to the
/// next (no build host, user or time in the kernel).
fn make(src: &Path) -> Command {
    let mut command = Command::new("make");
    command
        .current_dir(src)
        .env("KBUILD_BUILD_USER", "runner")
        .env("KBUILD_BUILD_HOST", "runner")
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .stdin(Stdio::null());
    command
}

/// Runs the compile, telling `progress` every 100 files; on failure the
/// error carries the end of its output.
fn compile(command: &mut Command, progress: impl Fn(usize)) -> Result<(), ImageError> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::CommandFailed {
            command: shown.clone(),
            status: "could not start".into(),
            output: e.to_string(),
        })?;
    // stderr is small (warnings, errors); read it on a thread so that
    // neither pipe fills while the other is read.
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let keep = lines.len().saturating_sub(15);
        lines.drain(..keep);
        lines
    });
    let mut files = 0;
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        if line.trim_start().starts_with("CC ") {
            files += 1;
            if files % 100 == 0 {
                progress(files);
            }
        }
        tail.push_back(line);
        if tail.len() > 5 {
            tail.pop_front();
        }
    }
    let status = child.wait().map_err(|e| ImageError::CommandFailed {
        command: shown.clone(),
        status: "lost".into(),
        output: e.to_string(),
    })?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        let mut output: Vec<String> = tail.into_iter().collect();
        output.extend(errors);
        return Err(ImageError::CommandFailed {
            command: shown,
            status: status.to_string(),
            output: output.join("\n"),
        });
    }
    Ok(())
}

/// The lines of `fragment` that `config` (a merged `.config`) does not
/// hold: options set that ended up otherwise, options off that ended up
/// on.
fn lost_options(fragment: &str, config: &str) -> Vec<String> {
    let values = settings(config);
    settings(fragment)
        .into_iter()
        .filter(|(name, wanted)| {
            let got = values.get(name).cloned().flatten();
            match wanted {
                Some(value) => got.as_ref() != Some(value),
                None => got.is_some_and(|v| v != "n"),
            }
        })
        .map(|(name, wanted)| match wanted {
            Some(value) => format!("{name}={value}"),
            None => format!("{name} off"),
        })
        .collect()
}

/// `CONFIG_X=value` as `Some(value)`, `# CONFIG_X is not set` as `None`;
/// a later line overrides an earlier one, as in Kconfig.
fn settings(text: &str) -> BTreeMap<String, Option<String>> {
    let mut settings = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .filter(|name| name.starts_with("CONFIG_"))
        {
            settings.insert(name.to_string(), None);
        } else if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            settings.insert(name.to_string(), Some(value.to_string()));
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_lost_in_the_merge_are_named() {
        let fragment = "# why\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=4\n";
        let config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=4\n";
        assert_eq!(
            lost_options(fragment, config),
            ["CONFIG_B off", "CONFIG_C=y"]
        );
        assert!(lost_options(fragment, "CONFIG_A=y\nCONFIG_C=y\nCONFIG_N=4\n").is_empty());
    }

    #[test]
    fn the_debug_flavour_turns_printk_on_and_keeps_every_other_option() {
        let plain = settings(&fragment(false));
        let debug = settings(&fragment(true));
        assert_eq!(plain.get("CONFIG_PRINTK"), Some(&None));
        assert_eq!(debug.get("CONFIG_PRINTK"), Some(&Some("y".into())));
        let changed: Vec<_> = plain
            .iter()
            .filter(|(name, value)| debug.get(*name) != Some(value))
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(changed, ["CONFIG_EARLY_PRINTK", "CONFIG_PRINTK"]);
    }
}
