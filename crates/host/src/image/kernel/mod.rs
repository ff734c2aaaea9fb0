//! The guest kernel, one of two:
//!
//! - `runner` (the default): Runner Codes' own, built from Debian's kernel source package
//!   with the options in `runner.config` over `tinyconfig` ([`source`]): no
//!   modules, printk off, about a fifth of Debian's size and booting several
//!   times sooner under TCG. Its debug flavour (`debug.config` on top)
//!   prints the kernel's messages on the console.
//! - `debian`: Debian's cloud kernel package and the
//!   modules the guest loads from the initramfs ([`debian`]).
//!
//! Either is an image like the others: content-addressed by its recipe,
//! built once and cached.

mod debian;
mod source;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DebianSource, ImageError, Manifest, Progress};

pub const VMLINUX: &str = "vmlinux";
const MODULES_DIR: &str = "modules";
/// The modules the initramfs loads, in order; empty for a kernel without
/// modules.
const MODULE_ORDER: &str = "modules.order";

/// Which kernel guests boot (`kernel` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Built here from Debian's kernel source with Runner Codes' options:
    /// no modules, no SMP, no printk; boots about four times sooner.
    #[default]
    Runner,
    /// Debian's `linux-image-cloud-amd64`, with the modules the agent loads.
    Debian,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelChoice::Runner => "runner",
            KernelChoice::Debian => "debian",
        })
    }
}

/// The kernel guests boot and its flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSpec {
    pub choice: KernelChoice,
    /// Kernel messages on the console: printk built in (`runner`), the
    /// console not quietened (both).
    pub debug: bool,
}

impl KernelSpec {
    /// Every kernel a configuration can select.
    pub const ALL: [KernelSpec; 3] = [
        KernelSpec {
            choice: KernelChoice::Runner,
            debug: false,
        },
        KernelSpec {
            choice: KernelChoice::Runner,
            debug: true,
        },
        KernelSpec {
            choice: KernelChoice::Debian,
            debug: false,
        },
    ];

    /// Kernel arguments this kernel boots with, after the backend's own.
    fn args(&self) -> Vec<String> {
        if self.debug {
            // Overrides the backend's `quiet loglevel=3`.
            vec!["ignore_loglevel".into()]
        } else {
            Vec::new()
        }
    }

    /// The image's name and recipe; `Err` if the recipe cannot be known
    /// here (the kernel source is not installed).
    pub(super) fn recipe(
        &self,
        source: &DebianSource,
    ) -> Result<(Option<&'static str>, serde_json::Value), ImageError> {
        Ok(match self.choice {
            KernelChoice::Debian => (self.name(), to_value(debian::recipe(source))),
            KernelChoice::Runner => (self.name(), to_value(source::recipe(self.debug)?)),
        })
    }

    /// The image's name.
    pub(super) fn name(&self) -> Option<&'static str> {
        match self.choice {
            // Named as before there was a choice, so that its id stays.
            KernelChoice::Debian => None,
            KernelChoice::Runner => Some(if self.debug { "runner-debug" } else { "runner" }),
        }
    }

    /// Whether a built kernel's recipe has this kernel's options, whatever
    /// source version and compiler built it.
    pub(super) fn same_options(&self, recipe: &serde_json::Value) -> bool {
        match self.choice {
            // Its recipe never needs a tool to be known.
            KernelChoice::Debian => false,
            KernelChoice::Runner => source::same_options(self.debug, recipe),
        }
    }

    /// Builds the kernel into `out`; returns its version.
    pub(super) fn build(
        &self,
        source: &DebianSource,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<String, ImageError> {
        match self.choice {
            KernelChoice::Debian => debian::build(source, out, progress),
            KernelChoice::Runner => source::build(self.debug, out, progress),
        }
    }
}

fn to_value(recipe: impl Serialize) -> serde_json::Value {
    serde_json::to_value(recipe).expect("a recipe serialises")
}

/// A built kernel image directory.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    /// The image id (directory name), which names everything built on it.
    pub id: String,
    /// Kernel arguments of its flavour, for every VM that boots it.
    pub args: Vec<String>,
    /// Its release and where it comes from, as its manifest says.
    pub version: String,
    pub build_seconds: f64,
    /// The size of the image's files.
    pub size_bytes: u64,
}

impl KernelImage {
    pub(super) fn open(
        dir: &Path,
        spec: &KernelSpec,
        manifest: &Manifest,
    ) -> Result<Self, ImageError> {
        let vmlinux = dir.join(VMLINUX);
        if !vmlinux.is_file() {
            return Err(ImageError::Invalid(format!(
                "{} is missing",
                vmlinux.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            vmlinux,
            id: dir.file_name().unwrap().to_string_lossy().into_owned(),
            args: spec.args(),
            version: manifest.version.clone(),
            build_seconds: manifest.build_seconds,
            size_bytes: manifest.size_bytes,
        })
    }

    /// The modules to load, in load order, with their files.
    pub fn modules(&self) -> Result<Vec<(String, PathBuf)>, ImageError> {
        let order_path = self.dir.join(MODULE_ORDER);
        let order = fs::read_to_string(&order_path).map_err(ImageError::io("read", &order_path))?;
        Ok(order
            .lines()
            .filter(|l| !l.is_empty())
            .map(|name| {
                let file = self.dir.join(MODULES_DIR).join(format!("{name}.ko"));
                (name.to_string(), file)
            })
            .collect())
    }
}
