//! The server's own settings: where it listens, its queue, its body
//! limits, its shutdown, its playground and its API keys. The engine's
//! settings ([`runner_host::Config`]) are the engine's; both come from the
//! one configuration file a user writes, whose keys they split between
//! them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The settings of `runner serve` beside the engine's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port the API listens on.
    pub listen: SocketAddr,
    /// Build missing images at start-up (the server is not ready until then).
    pub prepare_images: bool,
    /// Make missing snapshots at start-up, after the images (executions boot
    /// cold until they exist).
    pub prepare_snapshots: bool,
    /// Requests that may wait for capacity; more get 429 at once.
    pub queue_size: usize,
    /// How long a request waits for capacity before it gets 429.
    pub queue_timeout_ms: u64,
    /// Largest request body of an execution.
    pub max_body_bytes: usize,
    /// Largest request body of a judge submission (its tests' data may be
    /// up to 64 MiB).
    pub max_submission_bytes: usize,
    /// After SIGTERM, how long running executions may go on before they are
    /// killed.
    pub shutdown_timeout_ms: u64,
    /// The playground page at `/`: `auto` serves it when the server listens
    /// on a loopback address only, `on` always, `off` never.
    pub playground: Switch,
    /// API keys, in the file only (`[[api_keys]]`). With none, the server
    /// answers clients on this machine only; with some, every request but
    /// `/healthz` needs `Authorization: Bearer KEY`.
    pub api_keys: Vec<ApiKey>,
}

/// On, off, or decided by the situation (see where it is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    Auto,
    On,
    Off,
}

/// An API key as the configuration holds it: never the key itself, only
/// its SHA-256 (`runner key new` makes a key and prints this entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds the key: the owner of the sessions it creates, in logs.
    pub name: String,
    /// The key's SHA-256, in lowercase hex.
    pub sha256: String,
    /// Sessions this key may have running at once; `sessions.max_per_owner`
    /// when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// Sessions this key may have paused at once;
    /// `sessions.max_paused_per_owner` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_paused_sessions: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prepare_images: true,
            prepare_snapshots: true,
            queue_size: 64,
            queue_timeout_ms: 60_000,
            max_body_bytes: 8 << 20,
            max_submission_bytes: 96 << 20,
            shutdown_timeout_ms: 30_000,
            playground: Switch::Auto,
            api_keys: Vec::new(),
        }
    }
}

/// A server setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ServerConfigError(String);

impl ServerConfig {
    /// Whether the playground is served: `auto` for a loopback listener
    /// only.
    pub fn playground_served(&self) -> bool {
        match self.playground {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => self.listen.ip().is_loopback(),
        }
    }

    /// Refuses settings that cannot work together, naming them.
    pub fn check(&self) -> Result<(), ServerConfigError> {
        let invalid = |message: &str| Err(ServerConfigError(message.to_string()));
        if self.queue_timeout_ms == 0 && self.queue_size > 0 {
            return invalid(
                "queue_timeout_ms is 0 but queue_size is not: set queue_size = 0 to refuse at once",
            );
        }
        if self.max_body_bytes == 0 || self.max_submission_bytes == 0 {
            return invalid("max_body_bytes and max_submission_bytes must be above 0");
        }
        let mut seen = std::collections::HashSet::new();
        for key in &self.api_keys {
            let valid_hash = key.sha256.len() == 64
                && key
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if key.name.is_empty() || !valid_hash {
                return invalid(&format!(
                    "api_keys: {:?} needs a name and a sha256 of 64 lowercase hex digits (`runner key new` prints one)",
                    key.name
                ));
            }
            if !seen.insert(&key.name) || !seen.insert(&key.sha256) {
                return invalid(&format!(
                    "api_keys: {:?} appears twice (by name or by key)",
                    key.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, sha256: &str) -> ApiKey {
        ApiKey {
            name: name.into(),
            sha256: sha256.into(),
            max_sessions: None,
            max_paused_sessions: None,
        }
    }

    #[test]
    fn keys_need_a_name_and_a_hash_once_each() {
        let hash = "ab".repeat(32);
        let with = |keys: Vec<ApiKey>| ServerConfig {
            api_keys: keys,
            ..ServerConfig::default()
        };
        assert!(with(vec![key("alice", &hash)]).check().is_ok());
        for (keys, why) in [
            (
                vec![key("alice", &hash), key("alice", &hash)],
                "appears twice",
            ),
            (vec![key("alice", "secret")], "64 lowercase hex"),
            (vec![key("alice", &hash.to_uppercase())], "64 lowercase hex"),
            (vec![key("", &hash)], "needs a name"),
        ] {
            let e = with(keys).check().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_queue_needs_a_timeout_and_bodies_a_size() {
        let mut config = ServerConfig {
            queue_timeout_ms: 0,
            ..ServerConfig::default()
        };
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("queue_size = 0")
        );
        config.queue_size = 0;
        assert!(config.check().is_ok());
        config.max_body_bytes = 0;
        assert!(config.check().is_err());
    }

    #[test]
    fn the_playground_is_served_on_loopback_unless_told() {
        let mut config = ServerConfig::default();
        assert!(config.playground_served());
        config.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(!config.playground_served());
        config.playground = Switch::On;
        assert!(config.playground_served());
    }
}
