//! Debian's kernel (`kernel = "debian"`): `linux-image-cloud-amd64`, with
//! the ELF `vmlinux` extracted from its bzImage (VMMs boot it directly,
//! through PVH or as Firecracker does) and the modules the guest needs,
//! decompressed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{MODULE_ORDER, MODULES_DIR, VMLINUX};
use crate::image::{DebianSource, ImageError, Progress, require_space, require_tool, run};

const PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the init needs, if the kernel does not have them built in:
/// the root disk (virtio-blk), the overlay for writes, entropy from the host
/// (virtio-rng), and the Firecracker transports (virtio-mmio, vsock).
/// Their dependencies are found and loaded first.
const WANTED_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_mmio",
    "virtio-rng",
    "overlay",
    "vsock",
    "vmw_vsock_virtio_transport",
];

#[derive(Serialize)]
struct Recipe<'a> {
    suite: &'a str,
    package: &'a str,
    modules: &'a [&'a str],
}

pub(super) fn recipe(source: &DebianSource) -> impl Serialize + '_ {
    Recipe {
        suite: &source.suite,
        package: PACKAGE,
        modules: WANTED_MODULES,
    }
}

pub(super) fn build(
    source: &DebianSource,
    out: &Path,
    progress: &dyn Progress,
) -> Result<String, ImageError> {
    require_tool("mmdebstrap", "mmdebstrap")?;
    require_tool("xz", "xz-utils")?;
    require_space(out, 512)?;
    let unpacked = out.join("unpacked");
    progress.step(&format!(
        "downloading {PACKAGE} from Debian {}",
        source.suite
    ));
    run(Command::new("mmdebstrap")
        .args([
            "--variant=extract",
            "--mode=root",
            "--format=directory",
            "--quiet",
        ])
        .arg(format!("--include={PACKAGE}"))
        .args(["--skip=check/empty", &source.suite])
        .arg(&unpacked)
        .arg(source.mirror()?))?;

    let vmlinuz = find_one(&unpacked.join("boot"), "vmlinuz-")?;
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    progress.step(&format!("extracting vmlinux of {release}"));
    let bzimage = fs::read(&vmlinuz).map_err(ImageError::io("read", &vmlinuz))?;
    let elf = extract_vmlinux(&bzimage)?;
    let vmlinux = out.join(VMLINUX);
    fs::write(&vmlinux, elf).map_err(ImageError::io("write", &vmlinux))?;

    let module_root = unpacked.join("usr/lib/modules").join(&release);
    let order = collect_modules(&module_root, &out.join(MODULES_DIR))?;
    let order_path = out.join(MODULE_ORDER);
    fs::write(&order_path, order.join("\n") + "\n")
        .map_err(ImageError::io("write", &order_path))?;
    fs::remove_dir_all(&unpacked).map_err(ImageError::io("remove", &unpacked))?;
    Ok(release)
}

fn find_one(dir: &Path, prefix: &str) -> Result<PathBuf, ImageError> {
    fs::read_dir(dir)
        .map_err(ImageError::io("read", dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .ok_or_else(|| ImageError::Invalid(format!("no {prefix}* in {}", dir.display())))
}

/// Finds the compressed kernel inside a bzImage and decompresses it, like the
/// kernel's `scripts/extract-vmlinux`: try each zstd frame start until one
/// decodes to an ELF file.
fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    for start in bzimage
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == ZSTD_MAGIC)
        .map(|(i, _)| i)
    {
        let mut input = &bzimage[start..];
        let Ok(mut decoder) = ruzstd::decoding::StreamingDecoder::new(&mut input) else {
            continue;
        };
        let mut elf = Vec::new();
        if decoder.read_to_end(&mut elf).is_ok() && elf.starts_with(b"\x7fELF") {
            return Ok(elf);
        }
    }
    Err(ImageError::Invalid(
        "no zstd-compressed ELF kernel found in the bzImage".into(),
    ))
}

/// Copies the wanted modules (and what they depend on) out of the package,
/// decompressed, and returns their load order. Modules built into the kernel
/// are skipped.
fn collect_modules(module_root: &Path, dest: &Path) -> Result<Vec<String>, ImageError> {
    fs::create_dir_all(dest).map_err(ImageError::io("create", dest))?;
    let builtin_path = module_root.join("modules.builtin");
    let builtin =
        fs::read_to_string(&builtin_path).map_err(ImageError::io("read", &builtin_path))?;
    let mut modules = Modules {
        builtin: builtin
            .lines()
            .map(|line| {
                normalize(
                    line.rsplit('/')
                        .next()
                        .unwrap_or(line)
                        .trim_end_matches(".ko"),
                )
            })
            .collect(),
        files: Vec::new(),
        dest: dest.to_path_buf(),
        order: Vec::new(),
    };
    index_modules(&module_root.join("kernel"), &mut modules.files)?;
    for name in WANTED_MODULES {
        modules.add(name, 0)?;
    }
    Ok(modules.order)
}

struct Modules {
    builtin: Vec<String>,
    files: Vec<(String, PathBuf)>,
    dest: PathBuf,
    order: Vec<String>,
}

impl Modules {
    /// Adds `name` after everything it depends on (depth-first).
    fn add(&mut self, name: &str, depth: usize) -> Result<(), ImageError> {
        let name = normalize(name);
        if self.order.contains(&name) || self.builtin.contains(&name) {
            return Ok(());
        }
        if depth > 16 {
            return Err(ImageError::Invalid(format!(
                "module dependencies loop at {name}"
            )));
        }
        let Some((_, file)) = self.files.iter().find(|(n, _)| normalize(n) == name) else {
            return Err(ImageError::Invalid(format!(
                "kernel module {name} is neither built in nor in the package"
            )));
        };
        let image = decompress(file)?;
        let target = self.dest.join(format!("{name}.ko"));
        fs::write(&target, &image).map_err(ImageError::io("write", &target))?;
        for dep in module_depends(&image) {
            self.add(&dep, depth + 1)?;
        }
        self.order.push(name);
        Ok(())
    }
}

/// Module names treat `-` and `_` alike.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir)
        .map_err(ImageError::io("read", dir))?
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if let Some((stem, _)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once(".ko"))
        {
            out.push((stem.to_string(), path.clone()));
        }
    }
    Ok(())
}

fn decompress(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return fs::read(path).map_err(ImageError::io("read", path));
    }
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return Err(ImageError::Invalid(format!(
            "unknown module compression: {name}"
        )));
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(ImageError::io("run decompressor on", path))?;
    if !output.status.success() {
        return Err(ImageError::Invalid(format!("{tool} -dc {name} failed")));
    }
    Ok(output.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section.
fn module_depends(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = image.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &image[start + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let image = b"junk\0license=GPL\0depends=vsock,virtio_ring\0vermagic=6.12\0";
        assert_eq!(module_depends(image), ["vsock", "virtio_ring"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"none here").is_empty());
    }

    #[test]
    fn a_bzimage_without_zstd_elf_is_refused() {
        let mut fake = vec![0u8; 4096];
        fake[100..104].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(extract_vmlinux(&fake).is_err());
    }
}
