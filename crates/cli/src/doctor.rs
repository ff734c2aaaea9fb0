//! `runner doctor`: what would be used, and what is missing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_host::exec::agent;
use runner_host::image::KernelChoice;
use runner_host::vmm::placement::{self, CpuList, HugePages, Nodes};
use runner_host::vmm::{self, Memory, VmSpec, accel};
use runner_protocol::Frame;

/// How long a debug boot may take (printing to a serial line under TCG is
/// slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
use runner_host::{Config, Runner};

pub async fn doctor(
    runner: Runner,
    config: &Config,
    debug_kernel: bool,
) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let state = runner.state().root();
    let free = nix::sys::statvfs::statvfs(state)
        .map(|s| (s.blocks_available() * s.fragment_size()) >> 20)
        .unwrap_or(0);
    outln!("state dir      {} ({free} MiB free)", state.display());
    if free < 2048 {
        problems.push(format!(
            "less than 2 GiB free in {}: image builds need it",
            state.display()
        ));
    }

    let vmm = config.vmm();
    let installed = match vmm::installed(&vmm).await {
        Ok(installed) => {
            let path = which(&installed.binary.to_string_lossy()).unwrap_or(installed.binary);
            outln!(
                "{:<14} {} ({})",
                installed.backend,
                path.display(),
                installed.version
            );
            Some(installed.backend)
        }
        Err(e) => {
            outln!("vmm            missing");
            problems.push(e.to_string());
            None
        }
    };
    // What `auto` may take besides (and what the other setting would use).
    let other = match vmm.backend {
        vmm::BackendKind::Gvisor => vmm::BackendKind::Qemu,
        vmm::BackendKind::Qemu | vmm::BackendKind::Auto => vmm::BackendKind::Gvisor,
    };
    match vmm::installed_kind(&vmm, other).await {
        Ok(found) if Some(found.backend) != installed => outln!(
            "{:<14} {} ({}), the other backend",
            found.backend,
            which(&found.binary.to_string_lossy())
                .unwrap_or(found.binary)
                .display(),
            found.version
        ),
        Ok(_) => {}
        Err(e) => outln!(
            "{:<14} not usable, the other backend: {e}",
            other.to_string()
        ),
    }
    for (tool, package, why) in [
        (
            "mmdebstrap",
            "mmdebstrap",
            "builds root filesystems and fetches the kernel",
        ),
        ("mkfs.ext4", "e2fsprogs", "writes root filesystem images"),
        ("xz", "xz-utils", "decompresses kernel modules"),
    ]
    .into_iter()
    .chain(
        (config.kernel == KernelChoice::Runner)
            .then_some([
                ("make", "make", "builds the guest kernel"),
                ("gcc", "build-essential", "compiles the guest kernel"),
                ("bison", "bison", "builds the guest kernel's configurator"),
                ("flex", "flex", "builds the guest kernel's configurator"),
                ("bc", "bc", "computes the guest kernel's timer constants"),
            ])
            .into_iter()
            .flatten(),
    ) {
        match which(tool) {
            Some(path) => outln!("{tool:<14} {}", path.display()),
            None => {
                outln!("{tool:<14} missing");
                problems.push(format!(
                    "{tool} not found ({why}): install the Debian package {package}"
                ));
            }
        }
    }

    let kernel = runner.images().kernel_spec();
    outln!(
        "kernel         {}{}",
        kernel.choice,
        if kernel.debug { " (debug flavour)" } else { "" }
    );

    let boot_files = runner.images().boot_files(agent());
    // Which backend `auto` takes, and gVisor's platform, only choosing
    // tells.
    let preflight = match vmm.backend {
        vmm::BackendKind::Qemu => accel::preflight(vmm.accel),
        vmm::BackendKind::Gvisor | vmm::BackendKind::Auto => None,
    };
    let mut installed = installed;
    let acceleration = match (preflight, &boot_files, installed) {
        (Some(choice), _, _) => format!("{}: {}", choice.accel, choice.reason),
        (None, Some((kernel, initramfs)), Some(_)) => {
            let backend = runner.backend(kernel, initramfs).await?;
            installed = Some(backend.info().name);
            format!("{}: {}", backend.info().accel, backend.info().reason)
        }
        (None, None, _) => {
            "unknown: /dev/kvm opens, and a probe VM will tell once the images are built \
             (runner image build)"
                .to_string()
        }
        (None, _, None) => "unknown: the VMM is missing".to_string(),
    };
    outln!("backend        {}", installed.unwrap_or("none"));
    outln!("acceleration   {acceleration}");
    let allowed = CpuList::allowed();
    let vm_cpus = config.vm_cpus.or(&allowed);
    outln!(
        "cpus           executions on {vm_cpus}, warm pools on {} (this process may use {allowed})",
        config.pool_cpus.or(vm_cpus)
    );
    outln!("numa           {}", numa(config, vm_cpus));
    let huge_pages = match (config.huge_pages, config.huge_pages.unavailable()) {
        (_, Some(why)) => why,
        (HugePages::Off, None) => "off (huge_pages): VM memory uses 4 KiB pages".into(),
        (HugePages::Transparent, None) => format!(
            "transparent ({}): a cold-booted VM's memory, and what a restored VM reads of its \
             snapshot's memory file (its writes copy 4 KiB pages)",
            placement::transparent_huge_pages().unwrap_or_default()
        ),
    };
    outln!("huge pages     {huge_pages}");

    let names: Vec<_> = runner.enabled_languages().into_iter().cloned().collect();
    for (id, built) in runner.images().status(&names, agent()) {
        outln!(
            "image          {id} {}",
            if built {
                "built"
            } else {
                "missing (built on first use, or: runner image build)"
            }
        );
    }
    // A snapshot made for another agent or other images is no snapshot of
    // these: executions boot cold until it is made again.
    if config.snapshots && boot_files.is_some() && installed.is_some() {
        let languages = runner.enabled_languages();
        for (id, ready) in runner.snapshot_readiness(&languages).await? {
            outln!(
                "snapshot       {id} {}",
                if ready {
                    "ready"
                } else {
                    "missing or damaged: executions boot cold until `runner snapshot create` \
                     (or a server start) makes it"
                }
            );
        }
    }
    if debug_kernel && let Err(e) = boot_with_messages(&runner).await {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        outln!("\nready");
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("");
        for problem in &problems {
            outln!("problem: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Where VMs' memory is bound, and why not where it is not.
fn numa(config: &Config, vm_cpus: &CpuList) -> String {
    let nodes = Nodes::of_host();
    let count = match nodes.len() {
        0 => return "the kernel lists no nodes: VM memory is not bound".into(),
        1 => "1 node".to_string(),
        n => format!("{n} nodes"),
    };
    if !config.numa_bind {
        return format!("{count}: VM memory is not bound (numa_bind = false)");
    }
    if nodes.len() == 1 {
        return format!("{count}: VM memory is bound to it, which changes nothing");
    }
    let node = |cpus: &CpuList| match nodes.node_of(cpus) {
        Some(node) => format!("node {node}"),
        None => format!("no node (CPUs {cpus} span nodes)"),
    };
    let pool_cpus = config.pool_cpus.or(vm_cpus);
    let mut text = format!(
        "{count}: executions' VM memory bound to {}, warm pools' to {}",
        node(vm_cpus),
        node(pool_cpus)
    );
    if nodes.node_of(vm_cpus).is_none() || nodes.node_of(pool_cpus) != nodes.node_of(vm_cpus) {
        text.push_str(
            "; give vm_cpus and pool_cpus within one node, the same one, so that a VM's \
             memory stays near its CPUs from its restore to its execution",
        );
    }
    text
}

/// Boots a VM of the first enabled language from the debug kernel (built
/// if missing), waits for its agent and shows the kernel's messages.
async fn boot_with_messages(runner: &Runner) -> anyhow::Result<()> {
    let Some(language) = runner.enabled_languages().first().map(|l| (*l).clone()) else {
        anyhow::bail!("no language is enabled to boot a VM of");
    };
    outln!("\nbooting a {} VM from the debug kernel", language.name);
    let images = runner
        .prepare(&language, Arc::new(crate::progress::Spinner::new()))
        .await?;
    let backend = runner
        .backend(&images.kernel.vmlinux, &images.initramfs)
        .await?;
    let id = format!("doctor-{}", std::process::id());
    let spec = VmSpec {
        id: id.clone(),
        kernel: images.kernel.vmlinux.clone(),
        initramfs: images.initramfs.clone(),
        rootfs: Some(images.rootfs.clone()),
        memory_mib: runner_host::vmm::vm_memory_mib(language.memory_mib.into()),
        vcpus: 1,
        kernel_args: images.kernel.args.clone(),
        run_dir: runner
            .state()
            .runs()
            .join(format!("{}.{id}", std::process::id())),
        memory: Memory::Private,
        cpus: Default::default(),
        background: false,
    };
    let started = Instant::now();
    let mut vm = backend.start(spec).await?;
    let hello = tokio::time::timeout(BOOT_TIMEOUT, vm.channel().recv()).await;
    let console = vm.console_tail();
    vm.destroy().await;
    outln!(
        "--- console ---\n{}\n--- end of console ---",
        console.trim_end()
    );
    match hello {
        Ok(Ok(Frame::Hello(_))) => {
            outln!(
                "the agent said hello {:.2} s after QEMU started",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Ok(Ok(other)) => anyhow::bail!("the agent sent {:?} instead of hello", other.kind()),
        Ok(Err(e)) => anyhow::bail!("the VM did not come up: {e}"),
        Err(_) => anyhow::bail!(
            "the agent did not say hello within {} s",
            BOOT_TIMEOUT.as_secs()
        ),
    }
}

/// Where `tool` is: itself if it is a path, else the first match on `PATH`.
fn which(tool: &str) -> Option<std::path::PathBuf> {
    if tool.contains('/') {
        return Some(tool.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
