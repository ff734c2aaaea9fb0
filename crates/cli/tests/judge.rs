//! Judge mode end to end, in real VMs: expected outputs and their
//! comparison modes.

mod common;

use std::time::Duration;

use serde_json::json;

use common::run;
use common::server::Server;

/// Runs bash `code` expecting `expected` (compared as `compare` says) and
/// returns the `--json` result.
fn judged(code: &str, expected: &str, compare: &[&str]) -> (Option<i32>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("expected.txt");
    std::fs::write(&file, expected).unwrap();
    let mut args = vec![
        "run",
        "--json",
        "--lang",
        "bash",
        "--expected-output",
        file.to_str().unwrap(),
    ];
    args.extend(compare);
    args.extend(["-c", code]);
    let done = run(&args, b"");
    (done.code(), done.json())
}

#[test]
fn each_comparison_mode_accepts_and_rejects() {
    let cases: &[(&str, &str, &[&str], &str)] = &[
        // code, expected output, comparison flags, status
        ("echo 42", "42\n", &[], "accepted"),
        ("printf '42  \\n\\n\\n'", "42\n", &[], "accepted"),
        ("echo 43", "42\n", &[], "wrong_answer"),
        (
            "printf '42 \\n'",
            "42\n",
            &["--compare", "exact"],
            "wrong_answer",
        ),
        ("echo 42", "42\n", &["--compare", "exact"], "accepted"),
        (
            "printf '1\\n2   3\\n'",
            "1 2 3",
            &["--compare", "tokens"],
            "accepted",
        ),
        (
            "echo 1 2 4",
            "1 2 3",
            &["--compare", "tokens"],
            "wrong_answer",
        ),
        (
            "echo 3.14159265",
            "3.1415926\n",
            &["--compare", "float"],
            "accepted",
        ),
        (
            "echo 3.15",
            "3.1415926\n",
            &["--compare", "float", "--absolute-tolerance", "0.01"],
            "accepted",
        ),
        (
            "echo 3.15",
            "3.1415926\n",
            &["--compare", "float"],
            "wrong_answer",
        ),
        // A status the run itself earns wins over any comparison.
        ("echo 42; exit 3", "42\n", &[], "runtime_error"),
    ];
    for (code, expected, compare, status) in cases {
        let (exit, result) = judged(code, expected, compare);
        assert_eq!(result["status"], *status, "{code} {compare:?}: {result:#}");
        let exit_wanted = match *status {
            "accepted" => 0,
            "wrong_answer" => 1,
            _ => 3,
        };
        assert_eq!(exit, Some(exit_wanted), "{code} {compare:?}");
        assert_eq!(
            result.get("difference").is_some(),
            *status == "wrong_answer",
            "{code}: {result:#}"
        );
    }
}

#[test]
fn a_wrong_answer_says_where_the_outputs_differ() {
    let (exit, result) = judged(
        "printf 'line one\\nthe answer is 43\\n'",
        "line one\nthe answer is 42\n",
        &[],
    );
    assert_eq!(exit, Some(1));
    assert_eq!(result["status"], "wrong_answer");
    assert_eq!(
        result["difference"],
        json!({"line": 2, "column": 16, "expected": "the answer is 42", "actual": "the answer is 43"})
    );
    assert_eq!(
        result["message"],
        "the output differs from the expected one at line 2, column 16"
    );
}

#[test]
fn bad_comparisons_are_refused_before_booting() {
    let done = run(
        &["run", "--lang", "bash", "--compare", "tokens", "-c", "true"],
        b"",
    );
    assert_eq!(done.code(), Some(2), "--compare needs --expected-output");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("expected.txt");
    std::fs::write(&file, "1").unwrap();
    let done = run(
        &[
            "run",
            "--lang",
            "bash",
            "--expected-output",
            file.to_str().unwrap(),
            "--compare",
            "float",
            "--relative-tolerance",
            "-1",
            "-c",
            "true",
        ],
        b"",
    );
    assert_eq!(done.code(), Some(2));
    assert!(
        done.stderr().contains("relative_tolerance"),
        "{}",
        done.stderr()
    );
}

#[test]
fn expected_outputs_over_the_api() {
    let server = Server::start(&["--languages", "python"]);
    let request = |expected: &str, compare: serde_json::Value| {
        json!({
            "language": "python",
            "files": [{ "content": "print(0.1 + 0.2)" }],
            "expected_output": expected,
            "compare": compare,
        })
    };
    let accepted = server.execute(&request("0.3\n", json!({"mode": "float"})));
    assert_eq!(accepted["status"], "accepted", "{accepted:#}");
    let wrong = server.execute(&request("0.3\n", json!({"mode": "lines"})));
    assert_eq!(wrong["status"], "wrong_answer", "{wrong:#}");
    assert_eq!(wrong["difference"]["actual"], "0.30000000000000004");
    for (compare, says) in [
        (json!({"mode": "fuzzy"}), "fuzzy"),
        (json!({"mode": "lines", "absolute_tolerance": 1}), "float"),
        (
            json!({"mode": "float", "absolute_tolerance": -1}),
            "absolute_tolerance",
        ),
    ] {
        let response = server.post("/v1/executions", request("0.3", compare).to_string());
        let status = response.status().as_u16();
        let error: serde_json::Value = response.json().unwrap();
        assert!(status == 400 || status == 422, "{status}: {error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    server.stop(Duration::from_secs(10));
}
