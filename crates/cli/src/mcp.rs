//! `runner mcp --server URL`: the MCP tools on a `runner serve` elsewhere,
//! through its HTTP API (its API key says who calls; its queue, limits and
//! sessions are its own).

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Method;
use runner_host::ExecutionRequest;
use runner_host::session::SessionRequest;
use runner_mcp::{Backend, Caller, ToolError};
use serde_json::{Value, json};

use crate::session::{ApiFailure, Body, Client, encode_path};

/// A client of one `runner serve`, as the tools' backend.
pub struct Remote(pub Client);

/// The server's error, or why it could not be reached.
fn tool_error(error: anyhow::Error) -> ToolError {
    match error.downcast::<ApiFailure>() {
        Ok(failure) => ToolError {
            code: failure.code.into(),
            message: failure.message,
        },
        Err(other) => ToolError {
            code: "unreachable".into(),
            message: format!("{other:#}"),
        },
    }
}

/// An execution request as the HTTP API takes it.
fn execution_body(request: ExecutionRequest, expected_output: Option<Vec<u8>>) -> Value {
    let files: Vec<Value> = request
        .files
        .into_iter()
        .map(|file| {
            let (content, encoding) = match String::from_utf8(file.content) {
                Ok(text) => (text, "utf8"),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    "base64",
                ),
            };
            let mut entry = json!({ "content": content, "encoding": encoding });
            if let Some(name) = file.name {
                entry["name"] = json!(name);
            }
            entry
        })
        .collect();
    let mut body = json!({
        "files": files,
        "stdin": String::from_utf8_lossy(&request.stdin),
        "args": request.args,
        "env": request.env,
        "limits": request.limits,
    });
    if !request.language.is_empty() {
        body["language"] = json!(request.language);
    }
    if let Some(command) = request.command {
        body["command"] = json!(command);
    }
    if let Some(expected) = expected_output {
        body["expected_output"] = json!(String::from_utf8_lossy(&expected));
    }
    if let Some(network) = request.network {
        body["network"] = json!(network);
    }
    body
}

impl Remote {
    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ToolError> {
        self.0
            .json(method, path, body.map(Body::Json))
            .await
            .map_err(tool_error)
    }
}

#[async_trait]
impl Backend for Remote {
    fn local_caller(&self) -> Caller {
        // The server's API key decides; these are not used.
        Caller {
            owner: String::new(),
            max_sessions: 0,
            max_paused: 0,
        }
    }

    async fn languages(&self) -> Result<Value, ToolError> {
        let list = self.json(Method::GET, "/v1/languages", None).await?;
        Ok(json!({ "languages": list }))
    }

    async fn run(
        &self,
        _: &Caller,
        request: ExecutionRequest,
        expected_output: Option<Vec<u8>>,
    ) -> Result<Value, ToolError> {
        let body = execution_body(request, expected_output);
        self.json(Method::POST, "/v1/executions", Some(body)).await
    }

    async fn create_session(
        &self,
        _: &Caller,
        request: SessionRequest,
    ) -> Result<Value, ToolError> {
        let body = serde_json::to_value(request).expect("a request serializes");
        self.json(Method::POST, "/v1/sessions", Some(body)).await
    }

    async fn run_in_session(
        &self,
        _: &Caller,
        id: &str,
        request: ExecutionRequest,
    ) -> Result<Value, ToolError> {
        let path = format!("/v1/sessions/{}/executions", encode_path(id));
        self.json(Method::POST, &path, Some(execution_body(request, None)))
            .await
    }

    async fn write_file(
        &self,
        _: &Caller,
        id: &str,
        path: String,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError> {
        let url = format!(
            "/v1/sessions/{}/files/{}?executable={executable}",
            encode_path(id),
            encode_path(&path)
        );
        self.0
            .send(Method::PUT, &url, Some(Body::Bytes(content)))
            .await
            .map(|_| ())
            .map_err(tool_error)
    }

    async fn read_file(
        &self,
        _: &Caller,
        id: &str,
        path: String,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError> {
        let url = format!(
            "/v1/sessions/{}/files/{}",
            encode_path(id),
            encode_path(&path)
        );
        let response = self
            .0
            .send(Method::GET, &url, None)
            .await
            .map_err(tool_error)?;
        let bytes = response.bytes().await.map_err(|e| tool_error(e.into()))?;
        if bytes.len() as u64 > limit {
            return Err(ToolError {
                code: "file_too_large".into(),
                message: format!(
                    "{path} has {} bytes, more than the {limit} a tool returns",
                    bytes.len()
                ),
            });
        }
        Ok(bytes.to_vec())
    }

    async fn list_files(&self, _: &Caller, id: &str, path: String) -> Result<Value, ToolError> {
        let url = format!(
            "/v1/sessions/{}/files?path={}",
            encode_path(id),
            encode_path(&path)
        );
        let listing = self.json(Method::GET, &url, None).await?;
        Ok(listing["entries"].clone())
    }

    async fn pause(&self, _: &Caller, id: &str) -> Result<Value, ToolError> {
        let path = format!("/v1/sessions/{}/pause", encode_path(id));
        self.json(Method::POST, &path, None).await
    }

    async fn resume(&self, _: &Caller, id: &str) -> Result<Value, ToolError> {
        let path = format!("/v1/sessions/{}/resume", encode_path(id));
        self.json(Method::POST, &path, None).await
    }

    async fn delete(&self, _: &Caller, id: &str) -> Result<(), ToolError> {
        let path = format!("/v1/sessions/{}", encode_path(id));
        self.0
            .send(Method::DELETE, &path, None)
            .await
            .map(|_| ())
            .map_err(tool_error)
    }
}
