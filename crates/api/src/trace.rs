//! The trace id of a request: the caller's, from `traceparent` (W3C Trace
//! Context) or `X-Request-Id`, else a new one. It names the execution in
//! logs and results and comes back in the `X-Request-Id` header.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

#[derive(Debug, Clone)]
pub struct TraceId(pub String);

pub const REQUEST_ID: &str = "x-request-id";

/// The trace id `headers` carry, if a valid one.
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("traceparent").and_then(parse_traceparent) {
        return Some(id);
    }
    header(REQUEST_ID)
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; version ff and
/// all-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    valid.then(|| parts[1].to_string())
}

/// Gives every request a [`TraceId`] and every response its header.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = from_headers(request.headers()).unwrap_or_else(runner_host::exec::new_trace_id);
    request.extensions_mut().insert(TraceId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn traceparent_first_then_request_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let both = headers(&[("traceparent", tp), (REQUEST_ID, "req-1")]);
        assert_eq!(
            from_headers(&both).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            from_headers(&headers(&[(REQUEST_ID, "req-1")])).as_deref(),
            Some("req-1")
        );
        assert_eq!(from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn invalid_ids_are_ignored() {
        for tp in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f35-00f067aa0ba902b7-01",
        ] {
            assert_eq!(from_headers(&headers(&[("traceparent", tp)])), None, "{tp}");
        }
        for id in ["", "a b", "../x", &"x".repeat(129)] {
            assert_eq!(from_headers(&headers(&[(REQUEST_ID, id)])), None, "{id}");
        }
    }
}
