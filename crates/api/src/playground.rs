//! The playground (`GET /`) and the operator's page (`GET /status`): an
//! HTML page and a script each and one stylesheet, embedded in the binary,
//! with no build step and nothing from elsewhere. The pages use the API as
//! any client does; they hold no data, so they are served without a key
//! even when the server has keys (the API calls they make carry the key
//! the user gives).

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("playground/index.html");
const STYLE: &str = include_str!("playground/playground.css");
const SCRIPT: &str = include_str!("playground/playground.js");
const STATUS: &str = include_str!("playground/status.html");
const STATUS_SCRIPT: &str = include_str!("playground/status.js");

/// The paths of the pages' files.
pub(crate) const PATHS: [&str; 5] = [
    "/",
    "/playground.css",
    "/playground.js",
    "/status",
    "/status.js",
];

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

pub(crate) async fn status_page() -> Response {
    file("text/html; charset=utf-8", STATUS)
}

pub(crate) async fn status_script() -> Response {
    file("text/javascript; charset=utf-8", STATUS_SCRIPT)
}
