//! Runner Codes as an MCP server (Model Context Protocol), built on the
//! official Rust SDK (`rmcp`): the tools an agent calls to run code once,
//! to list the languages, and to keep a session (a VM that lives across
//! calls, with its files) through its life.
//!
//! A tool's result is what a model reads well (a status line, then the
//! program's output, cut past [`TEXT_LIMIT`] with a note saying how much)
//! and the whole result as structured content. A program that fails (a
//! compile error, a time limit) is a normal tool result; a request that
//! cannot run (an unknown language, a bad limit, no such session) is a
//! tool result marked as an error, with the reason; arguments that are
//! missing or of the wrong type are refused by the protocol layer with an
//! error naming them.
//!
//! The tools run on a [`Backend`]: an [`Engine`], `runner mcp`'s own (the
//! same engine and configuration as `runner run`, over stdio) or `runner
//! serve`'s (its runner, sessions and capacity, over MCP's streamable HTTP
//! at `/mcp`, where the API key says who calls); or, for `runner mcp
//! --server`, a [`Remote`] `runner serve` through its typed client.

mod engine;
mod remote;
mod tools;

pub use engine::{Backend, Caller, Capacity, Engine, Languages, ToolError};
pub use remote::Remote;
pub use tools::{RunnerMcp, TEXT_LIMIT};

/// Serves the tools over this process's stdin and stdout until the client
/// closes them.
pub async fn serve_stdio(engine: std::sync::Arc<dyn Backend>) -> Result<(), std::io::Error> {
    use rmcp::ServiceExt;
    let service = RunnerMcp::new(engine)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(std::io::Error::other)?;
    service.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}
