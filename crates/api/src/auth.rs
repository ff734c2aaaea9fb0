//! Who is asking: API keys and the owner they make a request's.
//!
//! Without keys in the configuration the server is for this machine only:
//! a request from any other address gets 403, and every request has the
//! same owner. With keys, every request but `/healthz` needs
//! `Authorization: Bearer KEY`; the key's name owns the sessions it
//! creates, and no other key can see them. The configuration holds only
//! each key's SHA-256, so a leaked configuration file is no leaked key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runner_host::session::SessionConfig;
use runner_wire::ErrorCode;
use sha2::{Digest, Sha256};

use crate::App;
use crate::config::ServerConfig;
use crate::error::ApiError;

/// The owner of a request: whose sessions it sees, and how many it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The key's name; empty without keys.
    pub name: String,
    pub max_sessions: usize,
    pub max_paused: usize,
}

/// The keys a server accepts, by their hashes.
pub struct Keys {
    by_hash: HashMap<[u8; 32], Owner>,
    /// The owner of every request when there are no keys.
    anonymous: Owner,
}

/// A new API key: 256 random bits, hex, with a prefix that says what it is.
pub fn new_key() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    format!("rck_{}", hex(&bytes))
}

/// What the configuration holds of `key`: its SHA-256 in lowercase hex.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Keys {
    pub fn new(server: &ServerConfig, sessions: &SessionConfig) -> Self {
        let default_max = sessions.max_per_owner;
        let default_paused = sessions.max_paused_per_owner;
        let by_hash = server
            .api_keys
            .iter()
            .filter_map(|key| {
                // The configuration was checked: every hash is valid.
                let hash = unhex(&key.sha256)?;
                let owner = Owner {
                    name: key.name.clone(),
                    max_sessions: key.max_sessions.unwrap_or(default_max),
                    max_paused: key.max_paused_sessions.unwrap_or(default_paused),
                };
                Some((hash, owner))
            })
            .collect();
        Self {
            by_hash,
            anonymous: Owner {
                name: String::new(),
                max_sessions: default_max,
                max_paused: default_paused,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The owner of a request with `headers` from `peer` (unknown when the
    /// server was not asked for peers, as in-process callers).
    pub fn owner(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Owner, ApiError> {
        if self.by_hash.is_empty() {
            return match peer {
                Some(peer) if !peer.ip().is_loopback() && !is_mapped_loopback(peer) => {
                    Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "this server has no API keys, so it serves clients on its own machine only; its operator can add keys (api_keys, see `runner key new`) to serve others",
                    ))
                }
                _ => Ok(self.anonymous.clone()),
            };
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "this server needs an API key: send `Authorization: Bearer KEY`",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or_else(|| {
                unauthorized("the Authorization header must be `Bearer KEY`, with an API key")
            })?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash
            .get(&hash)
            .cloned()
            .ok_or_else(|| unauthorized("this API key is not one of this server's"))
    }
}

/// `::ffff:127.0.0.1`, as a dual-stack listener sees an IPv4 loopback
/// client.
fn is_mapped_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// Finds every request's [`Owner`], or answers it with 401 or 403.
/// `/healthz` is open to all: it says only that the process answers.
pub async fn layer(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || crate::playground::PATHS.contains(&path) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    match app.keys.owner(request.headers(), peer) {
        Ok(owner) => {
            // The MCP tools' caller (`/mcp`): the same owner.
            request.extensions_mut().insert(runner_mcp::Caller {
                owner: owner.name.clone(),
                max_sessions: owner.max_sessions,
                max_paused: owner.max_paused,
            });
            request.extensions_mut().insert(owner);
            next.run(request).await
        }
        Err(error) => {
            let challenge = error.status() == StatusCode::UNAUTHORIZED;
            let mut response = error.into_response();
            if challenge {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn keys() -> Keys {
        let mut config = ServerConfig::default();
        let sessions = SessionConfig {
            max_per_owner: 3,
            ..SessionConfig::default()
        };
        config.api_keys = vec![
            ApiKey {
                name: "alice".into(),
                sha256: hash_key("rck_alice"),
                max_sessions: Some(1),
                max_paused_sessions: None,
            },
            ApiKey {
                name: "bob".into(),
                sha256: hash_key("rck_bob"),
                max_sessions: None,
                max_paused_sessions: Some(2),
            },
        ];
        Keys::new(&config, &sessions)
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_key_names_its_owner_and_limit() {
        let keys = keys();
        let alice = keys.owner(&bearer("Bearer rck_alice"), None).unwrap();
        assert_eq!((alice.name.as_str(), alice.max_sessions), ("alice", 1));
        let bob = keys.owner(&bearer("bearer  rck_bob "), None).unwrap();
        assert_eq!((bob.name.as_str(), bob.max_sessions), ("bob", 3));
    }

    #[test]
    fn without_a_valid_key_a_request_is_unauthorized() {
        let keys = keys();
        let peer = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        for headers in [
            HeaderMap::new(),
            bearer("Bearer rck_carol"),
            bearer("Basic rck_alice"),
            bearer("rck_alice"),
            bearer("Bearer"),
        ] {
            let error = keys.owner(&headers, peer).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
            assert_eq!(error.code, ErrorCode::Unauthorized);
        }
    }

    #[test]
    fn without_keys_only_this_machine_is_served() {
        let keys = Keys::new(&ServerConfig::default(), &SessionConfig::default());
        let owner = |peer: SocketAddr| keys.owner(&HeaderMap::new(), Some(peer));
        assert!(owner(SocketAddr::from(([127, 0, 0, 1], 1))).is_ok());
        assert!(owner("[::1]:1".parse().unwrap()).is_ok());
        assert!(owner("[::ffff:127.0.0.1]:1".parse().unwrap()).is_ok());
        let far = owner(SocketAddr::from(([10, 1, 2, 3], 1))).unwrap_err();
        assert_eq!(
            (far.status(), far.code),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
        );
        assert!(owner("[::ffff:10.1.2.3]:1".parse().unwrap()).is_err());
    }

    #[test]
    fn a_key_hashes_to_what_the_configuration_holds() {
        let key = new_key();
        assert!(key.starts_with("rck_") && key.len() == 4 + 64, "{key}");
        assert_ne!(key, new_key());
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(unhex(&hash_key(&key)).map(|h| h.len()), Some(32));
    }
}
