//! `runner serve` on loopback: real HTTP, real VMs. Every response is checked
//! against the OpenAPI document the server serves.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use crate::common::server::{Server, check, header, metric, openapi};
use crate::common::{assert_clean, kvm, runner, succeeds, vm_processes};

fn python(code: &str) -> Value {
    json!({ "language": "python", "files": [{ "content": code }] })
}

#[test]
fn every_language_over_http() {
    // Compiles take tens of seconds under TCG: let the queue wait for them.
    let server = Server::start(&["--queue-timeout-ms", "900000"]);
    let cases = [
        ("python", "main.py", "print(input()[::-1])"),
        (
            "node",
            "index.js",
            "const s = require('fs').readFileSync(0, 'utf8'); console.log(s.trim().split('').reverse().join(''))",
        ),
        ("bash", "main.sh", "read s; rev <<< \"$s\""),
        (
            "go",
            "main.go",
            "package main\nimport (\"bufio\";\"fmt\";\"os\")\nfunc main() { s, _ := bufio.NewReader(os.Stdin).ReadString('\\n'); r := []rune(s[:len(s)-1]); for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 { r[i], r[j] = r[j], r[i] }; fmt.Println(string(r)) }",
        ),
        (
            "rust",
            "main.rs",
            "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap(); println!(\"{}\", s.trim().chars().rev().collect::<String>()); }",
        ),
    ];
    let languages: Value = server.get("/v1/languages").json().unwrap();
    for language in languages.as_array().unwrap() {
        check("Language", language);
    }
    let results: Vec<(String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(language, file, code)| {
                let server = &server;
                scope.spawn(move || {
                    let request = json!({
                        "language": language,
                        "files": [{ "name": file, "content": code }],
                        "stdin": "stressed\n",
                        // Generous: five VMs share two cores under TCG here.
                        "limits": { "run": { "wall_time_ms": 120_000, "cpu_time_ms": 120_000 } },
                    });
                    (language.to_string(), server.execute(&request))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (language, result) in &results {
        assert_eq!(result["status"], "ok", "{language}: {result:#}");
        assert_eq!(
            result["run"]["stdout"], "desserts\n",
            "{language}: {result:#}"
        );
        let listed = languages
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["language"] == language.as_str())
            .unwrap();
        assert_eq!(result["version"], listed["version"]);
        assert_eq!(
            result["compile"].is_object(),
            listed["compiled"].as_bool().unwrap(),
            "{language} compiles iff it says so"
        );
    }

    // The metrics moved with the executions.
    let metrics = server.metrics();
    for (language, _, _) in cases {
        assert_eq!(
            metric(
                &metrics,
                &format!("runner_executions_total{{language=\"{language}\",status=\"ok\"}}")
            ),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                &format!("runner_code_execution_seconds_count{{language=\"{language}\"}}")
            ),
            1.0
        );
    }
    assert_eq!(metric(&metrics, "runner_vm_boot_seconds_count"), 5.0);
    // The seed's buckets.
    assert!(
        metrics.contains("runner_vm_boot_seconds_bucket{le=\"3.0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runner_code_execution_seconds_bucket{le=\"60.0\",language=\"go\"}"),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "runner_vms_running"), 0.0);
    assert_eq!(metric(&metrics, "runner_queue_length"), 0.0);
    // The status page's data: the five executions, newest first.
    let status: Value = server.get("/v1/status").json().unwrap();
    check("ServerStatus", &status);
    assert_eq!(status["recent"].as_array().unwrap().len(), 5, "{status:#}");
    assert_eq!(status["capacity"]["admitted_vms"], 0, "{status:#}");
    assert_eq!(
        metric(&metrics, "runner_warm_pool_size{language=\"python\"}"),
        0.0
    );
    server.stop(Duration::from_secs(30));
}

#[test]
fn health_readiness_and_the_openapi_document() {
    let server = Server::start(&["--languages", "python,bash"]);
    let health = server.get("/healthz");
    assert_eq!(health.status(), 200);
    check("Health", &health.json().unwrap());
    let ready: Value = server.get("/readyz").json().unwrap();
    check("Readiness", &ready);
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["languages"],
        json!({ "bash": "ready", "python": "ready" })
    );
    let languages: Value = server.get("/v1/languages").json().unwrap();
    let names: Vec<&str> = languages
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["language"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bash", "python"], "only the languages served");
    let served: Value = server.get("/openapi.json").json().unwrap();
    assert_eq!(served, openapi());
    // Every path in the document answers something other than 404.
    for (path, operations) in openapi()["paths"].as_object().unwrap() {
        // A path with a parameter names something that does not exist here.
        if operations.get("get").is_some() && !path.contains('{') {
            assert_ne!(server.get(path).status(), 404, "{path}");
        }
    }
    server.stop(Duration::from_secs(10));
}

#[test]
fn bad_requests_are_refused_and_start_nothing() {
    let server = Server::start(&["--set", "max_body_bytes=4096", "--languages", "python,bash"]);
    let long_code = "#".repeat(5000);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"language\": ".to_vec(), 400, "malformed_json"),
        ("not JSON at all", b"print(1)".to_vec(), 400, "malformed_json"),
        ("invalid UTF-8", b"{\"language\": \"python\xff\", \"files\": []}".to_vec(), 400, "invalid_utf8"),
        ("unknown field", python("print(1)").to_string().replace("\"files\"", "\"colour\":1,\"files\"").into_bytes(), 400, "invalid_request"),
        ("wrong type", br#"{"language": "python", "files": "print(1)"}"#.to_vec(), 400, "invalid_request"),
        ("missing files", br#"{"language": "python"}"#.to_vec(), 422, "invalid_request"),
        ("body too large", python(&long_code).to_string().into_bytes(), 413, "body_too_large"),
        ("unknown language", br#"{"language": "cobol", "files": [{"content": "x"}]}"#.to_vec(), 422, "unknown_language"),
        ("language not served", br#"{"language": "go", "files": [{"content": "x"}]}"#.to_vec(), 422, "unknown_language"),
        ("limit of zero", json!({"language": "python", "files": [{"content": "1"}], "limits": {"run": {"wall_time_ms": 0}}}).to_string().into_bytes(), 422, "invalid_request"),
        ("limit over the maximum", json!({"language": "python", "files": [{"content": "1"}], "limits": {"run": {"memory_mib": 1_000_000}}}).to_string().into_bytes(), 422, "invalid_request"),
        ("unknown limit", json!({"language": "python", "files": [{"content": "1"}], "limits": {"run": {"wall_time": 5}}}).to_string().into_bytes(), 400, "invalid_request"),
        ("no files", json!({"language": "python", "files": []}).to_string().into_bytes(), 422, "invalid_request"),
        ("file outside", json!({"language": "python", "files": [{"content": "1"}, {"name": "../x", "content": ""}]}).to_string().into_bytes(), 422, "invalid_request"),
        ("unnamed second file", json!({"language": "python", "files": [{"content": "1"}, {"content": ""}]}).to_string().into_bytes(), 422, "invalid_request"),
        ("bad base64", json!({"language": "python", "files": [{"content": "!!", "encoding": "base64"}]}).to_string().into_bytes(), 422, "invalid_request"),
        ("bad encoding", json!({"language": "python", "files": [{"content": "1", "encoding": "rot13"}]}).to_string().into_bytes(), 400, "invalid_request"),
        // What cannot reach execve or the file system, in every position.
        ("NUL in an argument", json!({"language": "python", "files": [{"content": "1"}], "args": ["a\u{0}b"]}).to_string().into_bytes(), 422, "invalid_request"),
        ("NUL in an environment value", json!({"language": "python", "files": [{"content": "1"}], "env": {"A": "x\u{0}"}}).to_string().into_bytes(), 422, "invalid_request"),
        ("NUL in an environment name", json!({"language": "python", "files": [{"content": "1"}], "env": {"A\u{0}B": "x"}}).to_string().into_bytes(), 422, "invalid_request"),
        ("NUL in a file name", json!({"language": "python", "files": [{"content": "1"}, {"name": "a\u{0}.py", "content": ""}]}).to_string().into_bytes(), 422, "invalid_request"),
        ("bad name of the first file", json!({"language": "python", "files": [{"name": "../main.py", "content": "1"}]}).to_string().into_bytes(), 422, "invalid_request"),
        ("an output outside the working directory", json!({"language": "python", "files": [{"content": "1"}], "outputs": ["../etc/passwd"]}).to_string().into_bytes(), 422, "invalid_request"),
        ("a terminal without a client to type", json!({"language": "python", "files": [{"content": "1"}], "pty": {"rows": 24, "cols": 80}}).to_string().into_bytes(), 422, "invalid_request"),
    ];
    for (what, body, status, code) in cases {
        for path in ["/v1/executions", "/v1/executions/stream"] {
            let response = server.post(path, body.clone());
            assert_eq!(response.status(), status, "{what} on {path}");
            let trace = header(&response, "x-request-id");
            let error: Value = response.json().unwrap();
            check("Error", &error);
            assert_eq!(error["code"], code, "{what}: {error}");
            assert_eq!(error["trace_id"], trace.as_str(), "{what}");
            assert!(
                error["message"].as_str().unwrap().len() > 10,
                "{what}: {error}"
            );
        }
    }
    let response = server.get("/v1/executions");
    assert_eq!(response.status(), 405);
    check("Error", &response.json().unwrap());
    let response = server.get("/v2/nothing");
    assert_eq!(response.status(), 404);
    check("Error", &response.json().unwrap());
    // Found by the API fuzzing: these answered in plain text.
    for (path, code) in [
        ("/v1/executions/ws", "not_a_websocket"),
        ("/v1/sessions/ses_x/executions/ws", "not_a_websocket"),
        ("/v1/sessions/ses_x/files?colour=red", "malformed_query"),
    ] {
        let response = server.get(path);
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().unwrap();
        check("Error", &error);
        assert_eq!(error["code"], code, "{path}: {error}");
    }
    let response = server
        .client
        .put(format!(
            "{}/v1/sessions/ses_x/files/a?executable=maybe",
            server.base
        ))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().unwrap()["code"], "malformed_query");

    // Nothing booted.
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "runner_vm_boot_seconds_count"),
        0.0,
        "{metrics}"
    );
    assert!(!metrics.contains("runner_executions_total{"), "{metrics}");
    assert!(vm_processes(server.pid()).is_empty());
    server.stop(Duration::from_secs(10));
}

#[test]
fn twenty_requests_at_once() {
    // Twenty cold boots take minutes on two cores under TCG: let them wait.
    let server = Server::start(&["--languages", "bash", "--queue-timeout-ms", "900000"]);
    let results: Vec<(u32, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=20u32)
            .map(|n| {
                let server = &server;
                scope.spawn(move || {
                    let request = json!({
                        "language": "bash",
                        "files": [{ "content": "read n; echo $((n * n)) $1" }],
                        "stdin": format!("{n}\n"),
                        "args": [format!("arg{n}")],
                    });
                    (n, server.execute(&request))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut traces = std::collections::HashSet::new();
    for (n, result) in &results {
        assert_eq!(result["status"], "ok", "{result:#}");
        assert_eq!(result["run"]["stdout"], format!("{} arg{n}\n", n * n));
        assert!(traces.insert(result["trace_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        server.metric("runner_executions_total{language=\"bash\",status=\"ok\"}"),
        20.0
    );
    // One log line per execution, with the seed's ExecutionMetrics.
    let finished: Vec<Value> = server
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "execution finished")
        .collect();
    assert_eq!(finished.len(), 20);
    for line in &finished {
        assert!(traces.contains(line["trace_id"].as_str().unwrap()));
        for field in ["vm_boot_time", "ready_time", "execution_time", "total_time"] {
            assert!(line[field].as_f64().unwrap() > 0.0, "{field} in {line}");
        }
    }
    server.stop(Duration::from_secs(30));
}

#[test]
fn trace_ids_come_from_the_caller() {
    let server = Server::start(&["--languages", "bash"]);
    let request = json!({ "language": "bash", "files": [{ "content": "echo hi" }] });
    let response = server
        .client
        .post(format!("{}/v1/executions", server.base))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(request.to_string())
        .send()
        .unwrap();
    assert_eq!(
        header(&response, "x-request-id"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let result: Value = response.json().unwrap();
    assert_eq!(result["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        result["metrics"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let logged = server.log_lines().into_iter().any(|l| {
        l["message"] == "execution finished" && l["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    });
    assert!(
        logged,
        "the execution's log line carries the caller's trace id"
    );

    // X-Request-Id, on an error too.
    let response = server
        .client
        .post(format!("{}/v1/executions", server.base))
        .header("x-request-id", "req-42")
        .body("{")
        .send()
        .unwrap();
    assert_eq!(header(&response, "x-request-id"), "req-42");
    assert_eq!(response.json::<Value>().unwrap()["trace_id"], "req-42");
    server.stop(Duration::from_secs(10));
}

/// Reads NDJSON events from a streaming response, checking each.
struct Events(BufReader<Response>);

impl Events {
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.0.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        let event: Value = serde_json::from_str(&line).unwrap();
        check("StreamEvent", &event);
        Some(event)
    }
}

#[test]
fn a_run_sends_back_the_files_it_names() {
    let server = Server::start(&["--languages", "python"]);
    let code = r#"
import os
os.makedirs("plots/deep", exist_ok=True)
open("result.csv", "w").write("a,b\n1,2\n")
open("plots/deep/fig.svg", "w").write("<svg/>")
open("big.bin", "wb").write(b"x" * (9 << 20))
open("empty.txt", "w").close()
open("notes.md", "w").write("not asked for")
os.symlink("/etc/shadow", "shadow.csv")
raise SystemExit(3)
"#;
    let mut request = python(code);
    request["outputs"] = json!([
        "*.csv",
        "plots/**/*.svg",
        "big.bin",
        "empty.txt",
        "missing/*.png"
    ]);
    let result = server.execute(&request);
    // However the program ended, what it wrote comes back.
    assert_eq!(result["run"]["exit_code"], 3, "{result:#}");
    let outputs = result["outputs"].as_array().unwrap();
    let paths: Vec<&str> = outputs
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    // In path order; a link is never followed, whatever it is named.
    assert_eq!(
        paths,
        ["big.bin", "empty.txt", "plots/deep/fig.svg", "result.csv"],
        "{result:#}"
    );
    let content = |i: usize| {
        base64::engine::general_purpose::STANDARD
            .decode(outputs[i]["content"].as_str().unwrap())
            .unwrap()
    };
    // Over the 8 MiB cap: listed with its size, not sent.
    assert_eq!(outputs[0]["truncated"], true);
    assert_eq!(outputs[0]["size"], 9 << 20);
    assert!(content(0).is_empty());
    assert_eq!((outputs[1]["size"].as_u64(), content(1)), (Some(0), vec![]));
    assert_eq!(outputs[2]["media_type"], "image/svg+xml");
    assert_eq!(content(2), b"<svg/>");
    assert_eq!(outputs[3]["media_type"], "text/csv");
    assert_eq!(outputs[3]["truncated"], false);
    assert_eq!(content(3), b"a,b\n1,2\n");

    // Without outputs, the result has none.
    let plain = server.execute(&python("open('x.csv', 'w').write('1')"));
    assert!(plain.get("outputs").is_none(), "{plain:#}");
    server.stop(Duration::from_secs(30));
}

fn stream(server: &Server, request: &Value) -> Events {
    let response = server.post("/v1/executions/stream", request.to_string());
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "application/x-ndjson");
    Events(BufReader::new(response))
}

#[test]
fn streaming_gives_output_as_it_comes_then_the_result() {
    let server = Server::start(&["--languages", "python"]);
    let code = "import sys, time\nfor i in range(3):\n    print('line', i, '☃', flush=True)\n    time.sleep(0.5)\nprint('oops', file=sys.stderr)\nsys.exit(3)\n";
    let mut events = stream(&server, &python(code));
    let started = events.next().unwrap();
    assert_eq!(started["type"], "started");
    let mut stdout = String::new();
    let mut stderr = String::new();
    let result = loop {
        let event = events.next().expect("a result before the end");
        match event["type"].as_str().unwrap() {
            "output" if event["stream"] == "stdout" => stdout += event["data"].as_str().unwrap(),
            "output" => stderr += event["data"].as_str().unwrap(),
            "result" => break event["result"].clone(),
            other => panic!("unexpected {other}"),
        }
    };
    assert!(events.next().is_none(), "nothing after the result");
    assert_eq!(stdout, "line 0 ☃\nline 1 ☃\nline 2 ☃\n");
    assert_eq!(stderr, "oops\n");
    assert_eq!(result["status"], "runtime_error");
    assert_eq!(result["run"]["exit_code"], 3);
    assert_eq!(result["run"]["stdout"], stdout.as_str());
    assert_eq!(result["trace_id"], started["trace_id"]);
    server.stop(Duration::from_secs(10));
}

#[test]
fn a_disconnecting_stream_frees_its_vm() {
    let server = Server::start(&["--languages", "python"]);
    let code = "import time\nprint('running', flush=True)\ntime.sleep(120)\n";
    let mut request = python(code);
    request["limits"] = json!({ "run": { "wall_time_ms": 150_000 } });
    let mut events = stream(&server, &request);
    assert_eq!(events.next().unwrap()["type"], "started");
    let output = events.next().unwrap();
    assert_eq!(
        output["data"], "running\n",
        "the VM is up and the program runs"
    );
    assert_eq!(server.metric("runner_vms_running"), 1.0);
    drop(events);

    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("runner_vms_running") != 0.0 {
        assert!(Instant::now() < deadline, "the VM outlived its client");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_clean(server.pid());
    assert_eq!(
        server.metric("runner_executions_total{language=\"python\",status=\"cancelled\"}"),
        1.0
    );
    server.stop(Duration::from_secs(10));
}

#[test]
fn a_burst_beyond_capacity_gets_429_and_every_accepted_run_completes() {
    // One VM at a time, one request waiting.
    let server = Server::start(&["--languages", "bash", "--max-vms", "1", "--queue-size", "1"]);
    let responses: Vec<(u16, Option<String>, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let request = json!({ "language": "bash", "files": [{ "content": format!("echo {i}") }] });
                    let response = server.post("/v1/executions", request.to_string());
                    let status = response.status().as_u16();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (status, retry, response.json().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<_> = responses.iter().filter(|(s, _, _)| *s == 200).collect();
    let refused: Vec<_> = responses.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(
        accepted.len(),
        2,
        "one running and one queued: {responses:#?}"
    );
    assert_eq!(refused.len(), 4, "{responses:#?}");
    for (_, _, result) in &accepted {
        check("ExecutionResult", result);
        assert_eq!(result["status"], "ok");
    }
    for (_, retry, error) in &refused {
        check("Error", error);
        assert_eq!(error["code"], "queue_full");
        let retry: u64 = retry.as_ref().expect("Retry-After").parse().unwrap();
        assert!(retry >= 1);
    }
    let metrics = server.metrics();
    assert_eq!(
        metric(
            &metrics,
            "runner_admission_rejections_total{reason=\"queue_full\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &metrics,
            "runner_executions_total{language=\"bash\",status=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(metric(&metrics, "runner_capacity_vms"), 1.0);
    server.stop(Duration::from_secs(10));
}

#[test]
fn a_request_that_waits_too_long_gets_429() {
    let server = Server::start(&[
        "--languages",
        "python",
        "--max-vms",
        "1",
        "--queue-timeout-ms",
        "1000",
    ]);
    let mut request = python("import time\nprint('busy', flush=True)\ntime.sleep(120)\n");
    request["limits"] = json!({ "run": { "wall_time_ms": 150_000 } });
    let mut busy = stream(&server, &request);
    busy.next().unwrap();
    let started = Instant::now();
    let response = server.post("/v1/executions", python("print(1)").to_string());
    assert_eq!(response.status(), 429);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().unwrap();
    assert_eq!(error["code"], "queue_timeout");
    assert_eq!(
        server.metric("runner_admission_rejections_total{reason=\"queue_timeout\"}"),
        1.0
    );
    drop(busy);
    server.stop(Duration::from_secs(30));
}

#[test]
fn sigterm_lets_running_executions_finish_then_stops_the_rest() {
    let server = Server::start(&[
        "--languages",
        "python,bash",
        "--shutdown-timeout-ms",
        "25000",
    ]);
    let mut request = python("import time\nprint('before', flush=True)\ntime.sleep(120)\n");
    request["limits"] = json!({ "run": { "wall_time_ms": 150_000 } });
    let mut long = stream(&server, &request);
    long.next().unwrap();
    assert_eq!(long.next().unwrap()["data"], "before\n");

    std::thread::scope(|scope| {
        let short = scope.spawn(|| {
            server.execute(
                &json!({ "language": "bash", "files": [{ "content": "sleep 1; echo done" }] }),
            )
        });
        // Let the short one be admitted, then ask the server to stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.metric("runner_vms_running") < 2.0 {
            assert!(Instant::now() < deadline, "the short request never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let result = short.join().unwrap();
        assert_eq!(
            result["status"], "ok",
            "a running execution finishes: {result:#}"
        );
        assert_eq!(result["run"]["stdout"], "done\n");
    });
    // No new work once draining.
    let fresh = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert!(
        fresh
            .get(format!("{}/healthz", server.base))
            .send()
            .is_err(),
        "the server no longer accepts connections"
    );
    // The long one is stopped at the deadline, and says so, with its output.
    let result = loop {
        let event = long.next().expect("a result event");
        if event["type"] == "result" {
            break event["result"].clone();
        }
    };
    assert_eq!(result["status"], "internal_error");
    assert!(
        result["message"].as_str().unwrap().contains("shut down"),
        "{result:#}"
    );
    assert_eq!(result["run"]["stdout"], "before\n");
    let pid = server.pid();
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success());
    assert_clean(pid);
    let log = server.log_lines();
    let complete = log
        .iter()
        .find(|l| l["message"] == "shutdown complete")
        .expect("logged");
    assert_eq!(complete["killed"], 1);
}

#[test]
fn print_config_shows_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1111\"\nqueue_size = 3\nmax_vms = 5\n[limits.run]\nwall_time_ms = 2000\n").unwrap();
    let text = succeeds(
        runner()
            .args(["serve", "--print-config", "--config"])
            .arg(&file)
            .args(["--queue-size", "9", "--set", "limits.run.cpu_time_ms=1500"])
            .env("RUNNER_QUEUE_SIZE", "7")
            .env("RUNNER_MAX_VMS", "4"),
    );
    let config: toml::Table = text.parse().unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:1111"), "file");
    assert_eq!(
        config["max_vms"].as_integer(),
        Some(4),
        "environment over file"
    );
    assert_eq!(
        config["queue_size"].as_integer(),
        Some(9),
        "flag over environment"
    );
    assert_eq!(
        config["limits"]["run"]["wall_time_ms"].as_integer(),
        Some(2000)
    );
    assert_eq!(
        config["limits"]["run"]["cpu_time_ms"].as_integer(),
        Some(1500)
    );
    assert!(text.starts_with("# capacity: 4 VMs at once"), "{text}");

    let output = runner()
        .args(["serve", "--print-config", "--set", "queue_sise=1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("queue_sise") && stderr.contains("queue_size"),
        "{stderr}"
    );
}

#[test]
fn the_schema_check_catches_what_does_not_match() {
    let wrong = [
        ("Error", json!({ "code": "queue_full" })),
        ("Error", json!({ "code": "nope", "message": "m" })),
        (
            "Error",
            json!({ "code": "queue_full", "message": "m", "extra": 1 }),
        ),
        (
            "StreamEvent",
            json!({ "type": "output", "stage": "run", "stream": "stdout" }),
        ),
        ("Health", json!({ "status": "fine" })),
    ];
    for (schema, value) in wrong {
        let caught = std::panic::catch_unwind(|| check(schema, &value));
        assert!(caught.is_err(), "{schema} accepted {value}");
    }
}

/// A server of bash with a warm pool of one VM, and `extra` arguments.
fn pool_of_one(extra: &[&str]) -> Server {
    let mut args = vec![
        "--languages",
        "bash",
        "--set",
        "pool.min_size=1",
        "--set",
        "pool.max_size=1",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn the_warm_pool_hands_out_each_vm_once_and_refills() {
    let server = pool_of_one(&[]);
    let mut seen = std::collections::HashSet::new();
    for round in 0..3 {
        let pooled = server.wait_for_pool("bash", 1);
        assert!(
            seen.insert(pooled[0].clone()),
            "a new VM each round: {pooled:?}"
        );
        // A VM that ran anything before would have the marker.
        let result = server.execute(&json!({
            "language": "bash",
            "files": [{ "content": "[ -e /tmp/used ] && echo reused; touch /tmp/used; echo round $1" }],
            "args": [round.to_string()],
        }));
        assert_eq!(result["metrics"]["start"], "pool", "{result:#}");
        assert_eq!(result["run"]["stdout"], format!("round {round}\n"));
        assert!(result["metrics"]["ready_time"].as_f64().unwrap() < 5_000.0);
        // The VM that served is gone, not back in the pool.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.pool_vms().contains(&pooled[0])
            || vm_processes(server.pid())
                .iter()
                .any(|p| p.starts_with(&format!("{}:", pooled[0])))
        {
            assert!(
                Instant::now() < deadline,
                "the used VM {} lives on",
                pooled[0]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        server.metric("runner_vm_starts_total{language=\"bash\",start=\"pool\"}"),
        3.0
    );
    server.stop(Duration::from_secs(30));
}

/// Under TCG a pooled VM runs its language's warm-up before it waits;
/// under KVM there is no translation cache to warm, and it does not.
#[test]
fn pooled_vms_run_their_warm_up_before_they_wait_unless_turned_off() {
    // The next process id a new process gets tells how many processes the
    // VM started since its snapshot: the warm-up is one more, and nothing
    // of it is left in the directories a program sees.
    let first_pid = |extra: &[&str]| {
        let server = pool_of_one(extra);
        server.wait_for_pool("bash", 1);
        let result = server.execute(&json!({
            "language": "bash",
            "files": [{ "content": "echo $(find /tmp /dev/shm -mindepth 1 | wc -l) $(ls -A | wc -l) $(sh -c 'echo $$')" }],
        }));
        server.stop(Duration::from_secs(30));
        assert_eq!(result["metrics"]["start"], "pool", "{result:#}");
        // Nothing in /tmp or /dev/shm, the program alone in its directory.
        let stdout = result["run"]["stdout"].as_str().unwrap();
        let pid = stdout.strip_prefix("0 1 ");
        pid.and_then(|pid| pid.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{stdout:?}"))
    };
    let warmed = first_pid(&[]);
    let unwarmed = first_pid(&["--set", "pool.warm_up=false"]);
    if kvm() || crate::common::gvisor() {
        assert_eq!(
            warmed, unwarmed,
            "under KVM and gVisor no warm-up runs: process ids {warmed} and {unwarmed}"
        );
    } else {
        assert!(
            warmed > unwarmed,
            "process ids after a warm-up: {warmed}, without: {unwarmed}"
        );
    }
}

/// Each thread of process `pid`: the CPUs it may run on (as the kernel
/// lists them) and its niceness.
fn threads_of(pid: &str) -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let dir = task.unwrap().path();
        let (Ok(status), Ok(stat)) = (
            std::fs::read_to_string(dir.join("status")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        // After the command's name in parentheses, nice is the 17th field.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        threads.push((cpus, fields[16].parse().unwrap()));
    }
    threads
}

#[test]
#[cfg_attr(
    one_cpu,
    ignore = "one CPU here: the pools' CPUs and the executions' need two"
)]
fn pooled_vms_wait_on_the_pools_cpus_and_run_on_the_executions() {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap())
        .collect();
    let [vm_cpu, pool_cpu, ..] = cpus[..] else {
        panic!("two CPUs to run on, and this process may use {cpus:?}");
    };
    let (vm_cpus, pool_cpus) = (format!("vm_cpus={vm_cpu}"), format!("pool_cpus={pool_cpu}"));
    let server = pool_of_one(&["--set", &vm_cpus, "--set", &pool_cpus]);
    // Restored and waiting: on the pools' CPU, at the lowest priority
    // (this process may raise it again as root only).
    let pooled = server.wait_for_pool("bash", 1);
    let root = nix::unistd::geteuid().is_root();
    let threads = threads_of(&pooled[0]);
    assert!(!threads.is_empty());
    for (cpus, nice) in &threads {
        assert_eq!(*cpus, pool_cpu.to_string(), "{threads:?}");
        assert_eq!(*nice, if root { 19 } else { 0 }, "{threads:?}");
    }
    // Taken by an execution: on the executions' CPU, ahead of other work.
    let result = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            server.execute(&json!({
                "language": "bash",
                "files": [{ "content": "sleep 2; echo done" }],
            }))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let threads = threads_of(&pooled[0]);
            let forward = |nice: i32| if root { nice < 0 } else { nice == 0 };
            if !threads.is_empty()
                && threads
                    .iter()
                    .all(|(cpus, nice)| *cpus == vm_cpu.to_string() && forward(*nice))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{threads:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        running.join().unwrap()
    });
    assert_eq!(result["metrics"]["start"], "pool", "{result:#}");
    assert_eq!(result["run"]["stdout"], "done\n");
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_vms_memory_is_bound_to_its_node_and_may_take_huge_pages_unless_turned_off() {
    let nodes = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
        .count();
    // Each VM's memory mapping of its snapshot, and what the kernel says
    // of the VM's process.
    // QEMU's memory: whatever backend the other tests use.
    let placement = |extra: &[&str]| {
        let server = pool_of_one(&[&["--set", "backend=qemu"], extra].concat());
        let pid = server.wait_for_pool("bash", 1)[0].clone();
        let proc = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
        let snapshot_memory = |text: &str| {
            text.lines()
                .find(|l| {
                    l.contains("/snapshots/") && (l.ends_with("/memory") || l.contains("/memory "))
                })
                .unwrap_or_else(|| panic!("no snapshot memory mapped: {text}"))
                .to_string()
        };
        let mapping = snapshot_memory(&proc("maps"));
        let policy = snapshot_memory(&proc("numa_maps"));
        let status = proc("status");
        let thp = status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim() == "1");
        let result = server.execute(&json!({
            "language": "bash",
            "files": [{ "content": "echo served" }],
        }));
        assert_eq!(result["metrics"]["start"], "pool", "{result:#}");
        assert_eq!(result["run"]["stdout"], "served\n");
        server.stop(Duration::from_secs(30));
        let start = u64::from_str_radix(mapping.split('-').next().unwrap(), 16).unwrap();
        (start, policy, thp)
    };

    let (start, policy, thp) = placement(&[]);
    assert_eq!(
        start % (2 << 20),
        0,
        "mapped at a 2 MiB boundary: {start:x}"
    );
    assert_ne!(thp, Some(false), "transparent huge pages allowed");
    if nodes <= 1 {
        assert!(policy.contains(" bind:0 "), "{policy}");
    } else {
        eprintln!("{nodes} nodes: whether this VM's CPUs lie in one is the host's layout");
    }

    let (_, policy, thp) = placement(&["--set", "huge_pages=off", "--set", "numa_bind=false"]);
    assert!(policy.contains(" default "), "not bound: {policy}");
    assert_ne!(thp, Some(true), "transparent huge pages disabled");
}

#[test]
fn a_pool_vm_killed_from_outside_is_replaced_and_no_request_is_lost() {
    let server = pool_of_one(&["--set", "pool.refill_interval_ms=200"]);
    let pooled = server.wait_for_pool("bash", 1);
    let pid: i32 = pooled[0].parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // At once: the dead VM is skipped, the request still runs.
    let result =
        server.execute(&json!({ "language": "bash", "files": [{ "content": "echo alive" }] }));
    assert_eq!(result["status"], "ok", "{result:#}");
    assert_eq!(result["run"]["stdout"], "alive\n");
    // And the pool gets a new VM.
    let replaced = server.wait_for_pool("bash", 1);
    assert_ne!(replaced, pooled);
    server.stop(Duration::from_secs(30));
}
