//! `/mcp`: the MCP server's tools (see `runner_mcp`) on this server's
//! runner, sessions and capacity, over MCP's streamable HTTP transport.
//! The API keys guard it as they guard every route: the key's owner owns
//! the sessions its tools create, and an execution waits in the same
//! queue as `POST /v1/executions`.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use runner_mcp::{Caller, Capacity, Engine, RunnerMcp, ToolError};

use crate::App;
use crate::error::ApiError;

/// The service mounted at `/mcp`.
pub(crate) fn service(app: &Arc<App>) -> StreamableHttpService<RunnerMcp, LocalSessionManager> {
    let engine = Engine::shared(
        app.runner.clone(),
        app.sessions.clone(),
        Arc::new(Places(app.clone())),
        Caller {
            owner: String::new(),
            max_sessions: app.engine.sessions.max_per_owner,
            max_paused: app.engine.sessions.max_paused_per_owner,
        },
    );
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(app.draining.child_token());
    if !app.server.api_keys.is_empty() {
        // Every request carries a key: a page that rebinds a name to this
        // server has none, so any Host may ask.
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(
        move || Ok(RunnerMcp::new(engine.clone())),
        LocalSessionManager::default().into(),
        config,
    )
}

/// This server's capacity, as the HTTP API's requests take it.
struct Places(Arc<App>);

#[async_trait::async_trait]
impl Capacity for Places {
    async fn admit(&self, vm_memory_mib: u32, wait: bool) -> Result<Box<dyn Send>, ToolError> {
        let app = &self.0;
        let admitted = match wait {
            true => app.admission.admit(vm_memory_mib, app.draining()).await,
            false => app.admission.admit_now(vm_memory_mib),
        };
        admitted
            .map(|permit| Box::new(permit) as Box<dyn Send>)
            .map_err(|rejection| {
                app.metrics.reject(rejection.reason());
                let error = ApiError::from_rejection(rejection);
                ToolError {
                    code: error.code.as_str().into(),
                    message: error.message,
                }
            })
    }
}
