//! The tools on a `runner serve` elsewhere, through its HTTP API
//! (`runner mcp --server`): its API key says who calls; its queue, limits
//! and sessions are its own.

use async_trait::async_trait;
use runner_host::session::SessionInfo;
use runner_wire::{
    Client, ClientError, ErrorCode, ExecutionBody, ExecutionResult, FileEntry, SessionBody,
};

use crate::engine::{Backend, Caller, Languages, ToolError};

/// A client of one `runner serve`, as the tools' backend.
pub struct Remote(pub Client);

impl From<ClientError> for ToolError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Api { code, message, .. } => ToolError {
                code: code.into(),
                message,
            },
            other => ToolError {
                code: "unreachable".into(),
                message: runner_host::error_chain(&other),
            },
        }
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

    async fn languages(&self) -> Result<Languages, ToolError> {
        Ok(Languages {
            languages: self.0.languages().await?,
            limits: None,
        })
    }

    async fn run(&self, _: &Caller, body: ExecutionBody) -> Result<ExecutionResult, ToolError> {
        Ok(self.0.execute(&body).await?)
    }

    async fn create_session(
        &self,
        _: &Caller,
        body: SessionBody,
    ) -> Result<SessionInfo, ToolError> {
        Ok(self.0.create_session(&body).await?)
    }

    async fn run_in_session(
        &self,
        _: &Caller,
        id: &str,
        body: ExecutionBody,
    ) -> Result<ExecutionResult, ToolError> {
        Ok(self.0.execute_in_session(id, &body).await?)
    }

    async fn write_file(
        &self,
        _: &Caller,
        id: &str,
        path: &str,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError> {
        Ok(self.0.write_file(id, path, content, executable).await?)
    }

    async fn read_file(
        &self,
        _: &Caller,
        id: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError> {
        let bytes = self.0.read_file(id, path).await?;
        if bytes.len() as u64 > limit {
            return Err(ToolError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "{path} has {} bytes, more than the {limit} a tool returns",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    async fn list_files(
        &self,
        _: &Caller,
        id: &str,
        path: &str,
    ) -> Result<Vec<FileEntry>, ToolError> {
        Ok(self.0.list_files(id, path).await?)
    }

    async fn pause(&self, _: &Caller, id: &str) -> Result<SessionInfo, ToolError> {
        Ok(self.0.pause_session(id).await?)
    }

    async fn resume(&self, _: &Caller, id: &str) -> Result<SessionInfo, ToolError> {
        Ok(self.0.resume_session(id).await?)
    }

    async fn delete(&self, _: &Caller, id: &str) -> Result<(), ToolError> {
        Ok(self.0.delete_session(id).await?)
    }
}
