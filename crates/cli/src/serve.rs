//! `runner serve`'s own flags: the common settings by name; any other goes
//! with `--set`.

/// The common settings of `runner serve` as flags of their own.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// State directory (images, snapshots, run directories).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<String>,
    /// Languages to serve, comma-separated [default: all].
    #[arg(long, value_name = "LIST")]
    languages: Option<String>,
    /// Host memory kept out of the VMs' budget, in MiB [default: 2048].
    #[arg(long, value_name = "MIB")]
    reserved_memory_mib: Option<String>,
    /// VMs at once; 0 for one per CPU [default: 0].
    #[arg(long, value_name = "N")]
    max_vms: Option<String>,
    /// Requests that may wait for a VM [default: 64].
    #[arg(long, value_name = "N")]
    queue_size: Option<String>,
    /// How long a request may wait for a VM, in ms [default: 60000].
    #[arg(long, value_name = "MS")]
    queue_timeout_ms: Option<String>,
    /// After SIGTERM, how long executions may go on, in ms [default: 30000].
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
}

impl ServeArgs {
    /// The flags given, as settings.
    pub fn settings(&self) -> Vec<(String, String)> {
        [
            ("listen", &self.listen),
            ("state_dir", &self.state_dir),
            ("languages", &self.languages),
            ("reserved_memory_mib", &self.reserved_memory_mib),
            ("max_vms", &self.max_vms),
            ("queue_size", &self.queue_size),
            ("queue_timeout_ms", &self.queue_timeout_ms),
            ("shutdown_timeout_ms", &self.shutdown_timeout_ms),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value.clone()?)))
        .collect()
    }
}
