//! `runner mcp`: the MCP tools on stdin and stdout, on this machine's
//! engine or on a `runner serve` elsewhere.

use std::process::ExitCode;
use std::sync::Arc;

use runner_host::Config;

#[derive(clap::Args)]
pub struct McpArgs {
    /// Run the tools on this `runner serve` (its HTTP API) instead of here
    /// [env RUNNER_SERVER].
    #[arg(long, value_name = "URL", env = "RUNNER_SERVER")]
    server: Option<String>,
    /// The server's API key, when it has keys [env RUNNER_API_KEY].
    #[arg(
        long,
        value_name = "KEY",
        env = "RUNNER_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
}

pub async fn mcp(
    args: McpArgs,
    engine: &Config,
    server: &runner_api::ServerConfig,
) -> anyhow::Result<ExitCode> {
    if args.server.is_some() {
        let client = crate::session::client(args.server, args.api_key, server);
        runner_mcp::serve_stdio(Arc::new(runner_mcp::Remote(client))).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let local = runner_mcp::Engine::local(engine, "")?;
    let served = runner_mcp::serve_stdio(local.clone()).await;
    local.close().await;
    served?;
    Ok(ExitCode::SUCCESS)
}
