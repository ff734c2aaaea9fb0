//! Progress of image builds: a spinner on a terminal, plain lines otherwise
//! (so that CI logs show what took the time).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use runner_host::image::Progress;

#[derive(Default)]
pub struct Spinner {
    /// Made at the first step: a run that builds nothing shows nothing.
    bar: OnceLock<ProgressBar>,
}

impl Spinner {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for Spinner {
    fn step(&self, message: &str) {
        if !std::io::stderr().is_terminal() {
            eprintln!("runner: {message}");
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(message.to_string());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}
