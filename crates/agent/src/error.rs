//! What goes wrong in the agent, with what it was doing. A request that
//! cannot be carried out is answered with the error's text; an agent that
//! can no longer write to the host ([`AgentError::Port`]) stops.

use std::io;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Writing to the host failed: nothing more can be answered.
    #[error("write to host: {0}")]
    Port(#[source] io::Error),
    /// An I/O operation failed while the agent did `what`.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    /// A system call failed while the agent did `what`.
    #[error("{what}: {error}")]
    Sys { what: String, error: Errno },
    /// What was asked cannot be done, or did not come about; the message
    /// says why.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        AgentError::Failed(message)
    }
}

impl From<&str> for AgentError {
    fn from(message: &str) -> Self {
        AgentError::Failed(message.to_string())
    }
}

/// Says what the agent was doing when an operation failed.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AgentError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AgentError> {
        self.map_err(|error| AgentError::Io {
            what: what(),
            error,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AgentError> {
        self.map_err(|error| AgentError::Sys {
            what: what(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_what_was_done_and_why() {
        let io: io::Result<()> = Err(io::Error::from_raw_os_error(libc::ENOENT));
        let e = io.context(|| "open /x".into()).unwrap_err();
        assert!(e.to_string().starts_with("open /x: No such file"), "{e}");
        let sys: nix::Result<()> = Err(Errno::EINVAL);
        let e = sys.context(|| "mount".into()).unwrap_err();
        assert_eq!(e.to_string(), "mount: EINVAL: Invalid argument");
        assert_eq!(AgentError::from("no").to_string(), "no");
    }
}
