//! The playground (`GET /`): one HTML page, one stylesheet and one script,
//! embedded in the binary, with no build step and nothing from elsewhere.
//! The page uses the API as any client does; it holds no data, so it is
//! served without a key even when the server has keys (the API calls it
//! makes carry the key the user gives it).

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("playground/index.html");
const STYLE: &str = include_str!("playground/playground.css");
const SCRIPT: &str = include_str!("playground/playground.js");

/// The paths of the playground's files.
pub(crate) const PATHS: [&str; 3] = ["/", "/playground.css", "/playground.js"];

fn file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}

pub(crate) async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}
