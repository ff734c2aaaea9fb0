//! `runner key`: API keys for `runner serve`.

use std::process::ExitCode;

use clap::Subcommand;
use runner_api::ApiKey;

use crate::exit::EXIT_USAGE;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make a new API key: prints the key (shown only this once) and the
    /// `[[api_keys]]` entry, with the key's hash, for the server's
    /// configuration file.
    New {
        /// Who holds the key: the owner of its sessions, in logs.
        #[arg(long)]
        name: String,
        /// Sessions the key may have running at once [default:
        /// sessions.max_per_owner].
        #[arg(long, value_name = "N")]
        max_sessions: Option<usize>,
    },
}

pub fn key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let KeyCommand::New { name, max_sessions } = command;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        eprintln!("runner: --name must be letters, digits and - _ . @, such as alice or ci-bot");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let key = runner_api::auth::new_key();
    let entry = ApiKey {
        name,
        sha256: runner_api::auth::hash_key(&key),
        max_sessions,
        max_paused_sessions: None,
    };
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        api_keys: [&'a ApiKey; 1],
    }
    let toml = toml::to_string(&Entry { api_keys: [&entry] })?;
    println!("# The key, shown only now (the server keeps its hash); clients send it");
    println!("# as `Authorization: Bearer KEY` (runner session: --api-key or RUNNER_API_KEY):");
    println!("{key}");
    println!();
    println!(
        "# For the server's configuration file ({}); restart it after:",
        runner_host::config::DEFAULT_CONFIG_FILE
    );
    print!("{toml}");
    Ok(ExitCode::SUCCESS)
}
