//! Sessions over HTTP, for the tests that use them: create one, run in
//! it, and its files; each answer checked against the OpenAPI document.

use reqwest::blocking::Response;
use serde_json::{Value, json};

use super::server::{Server, check};
use super::vm_processes;

/// Creates a session as `request` asks: its description (201, checked).
pub fn create(server: &Server, request: Value) -> Value {
    let response = server.post("/v1/sessions", request.to_string());
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 201, "{body:#}");
    check("Session", &body);
    body
}

/// Runs `request` in session `id`: its result (200, checked).
pub fn exec(server: &Server, id: &str, request: Value) -> Value {
    let response = server.post(
        &format!("/v1/sessions/{id}/executions"),
        request.to_string(),
    );
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{body:#}");
    check("ExecutionResult", &body);
    body
}

/// Runs the shell `command` in session `id`.
pub fn command(server: &Server, id: &str, command: &str) -> Value {
    exec(server, id, json!({ "command": command }))
}

/// The VM processes of session `id` (the server may be making snapshots
/// meanwhile).
pub fn session_vms(server: &Server, id: &str) -> Vec<String> {
    vm_processes(server.pid())
        .into_iter()
        .filter(|vm| vm.contains(id))
        .collect()
}

/// The run stage's stdout of a result.
pub fn stdout(result: &Value) -> &str {
    result["run"]["stdout"].as_str().unwrap()
}

/// An error response: its status and checked body.
pub fn error(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap();
    check("Error", &body);
    (status, body)
}

/// Writes session `id`'s file `path`.
pub fn put(server: &Server, id: &str, path: &str, content: Vec<u8>) -> Response {
    server
        .client
        .put(format!("{}/v1/sessions/{id}/files/{path}", server.base))
        .body(content)
        .send()
        .unwrap()
}

/// Reads session `id`'s file `path`.
pub fn get(server: &Server, id: &str, path: &str) -> Response {
    server.get(&format!("/v1/sessions/{id}/files/{path}"))
}

/// `DELETE path` of the server.
pub fn delete(server: &Server, path: &str) -> Response {
    server
        .client
        .delete(format!("{}{path}", server.base))
        .send()
        .unwrap()
}
