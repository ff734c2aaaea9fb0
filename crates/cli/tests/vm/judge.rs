//! Judge mode end to end, in real VMs: expected outputs and their
//! comparison modes.

use std::time::Duration;

use serde_json::json;

use crate::common::run;
use crate::common::server::Server;

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

/// Writes `tests` (name, stdin, expected output) into a folder as
/// `runner judge` reads them.
fn tests_dir(tests: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, input, output) in tests {
        std::fs::write(dir.path().join(format!("{name}.in")), input).unwrap();
        std::fs::write(dir.path().join(format!("{name}.out")), output).unwrap();
    }
    dir
}

/// `runner judge --json` of `source` (saved as `file`) in `language`.
fn judge(
    language: &str,
    file: &str,
    source: &str,
    tests: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, source).unwrap();
    let mut args = vec![
        "judge",
        "--json",
        "--lang",
        language,
        path.to_str().unwrap(),
        "--tests",
        tests.to_str().unwrap(),
    ];
    args.extend(extra);
    let done = run(&args, b"");
    (done.code(), done.json())
}

const SUM_C: &str = "#include <stdio.h>\nint main(int argc, char **argv) {\n    long a, b;\n    if (scanf(\"%ld %ld\", &a, &b) != 2) return 3;\n    printf(\"%ld\\n\", a + b + (argc > 1 ? 1000 : 0));\n    return 0;\n}\n";

#[test]
fn a_submission_compiles_once_and_runs_each_test_in_a_fresh_vm() {
    let tests = tests_dir(&[
        ("1", "1 2\n", "3\n"),
        ("2", "40 2\n", "42\n"),
        ("10", "5 5\n", "11\n"),
        ("3", "7 8\n", "15\n"),
        ("args", "1 1\n", "1002\n"),
    ]);
    std::fs::write(tests.path().join("args.args"), "--plus-a-thousand\n").unwrap();
    let (exit, result) = judge("c", "sum.c", SUM_C, tests.path(), &[]);
    assert_eq!(exit, Some(1), "a wrong answer: {result:#}");
    assert_eq!(result["status"], "wrong_answer");
    assert_eq!(result["compile"]["status"], "ok");
    let names: Vec<&str> = result["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["1", "2", "3", "10", "args"], "natural order");
    let status = |name: &str| {
        result["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    for name in ["1", "2", "3", "args"] {
        assert_eq!(status(name), "accepted", "{name}: {result:#}");
    }
    assert_eq!(status("10"), "wrong_answer");
    assert_eq!(
        result["message"],
        "test \"10\": the output differs from the expected one at line 1, column 2"
    );
    assert_eq!(
        result["summary"]["verdicts"],
        json!({"accepted": 4, "wrong_answer": 1})
    );
    assert_eq!(result["summary"]["tests"], 5);
    // One VM per test, each restored from the snapshot, none reused.
    let mut traces: Vec<&str> = result["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["start"], "snapshot", "{t:#}");
            t["trace_id"].as_str().unwrap()
        })
        .collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 5);
}

#[test]
fn a_test_never_sees_what_another_left_behind() {
    let program = "for f in /tmp/left ~/left /dev/shm/left; do [ -e \"$f\" ] && echo \"found $f\"; done\necho clean\ntouch /tmp/left ~/left /dev/shm/left\n";
    let tests = tests_dir(&[
        ("1", "", "clean\n"),
        ("2", "", "clean\n"),
        ("3", "", "clean\n"),
    ]);
    let (exit, result) = judge(
        "bash",
        "main.sh",
        program,
        tests.path(),
        &["--parallel", "1"],
    );
    assert_eq!(exit, Some(0), "{result:#}");
    assert_eq!(result["status"], "accepted");
}

#[test]
fn one_test_over_its_time_limit_fails_alone() {
    let program = "import sys, time\nn = int(sys.stdin.read())\nif n < 0:\n    time.sleep(30)\nprint(n * 2)\n";
    let tests = tests_dir(&[("1", "1", "2"), ("2", "-1", "-2"), ("3", "21", "42")]);
    let (exit, result) = judge(
        "python",
        "main.py",
        program,
        tests.path(),
        &["--wall-time-ms", "3000"],
    );
    assert_eq!(exit, Some(1));
    assert_eq!(result["status"], "time_limit_exceeded", "{result:#}");
    let statuses: Vec<&str> = result["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "time_limit_exceeded", "accepted"]);
    assert!(result["tests"][1]["wall_time_ms"].as_f64().unwrap() >= 3000.0);
    assert_eq!(
        result["summary"]["verdicts"],
        json!({"accepted": 2, "time_limit_exceeded": 1})
    );
}

#[test]
fn stop_on_first_failure_skips_the_tests_after_it() {
    let tests = tests_dir(&[("1", "", "yes\n"), ("2", "", "no\n"), ("3", "", "yes\n")]);
    let (exit, result) = judge(
        "bash",
        "main.sh",
        "echo yes",
        tests.path(),
        &["--stop-on-first-failure", "--parallel", "1"],
    );
    assert_eq!(exit, Some(1));
    assert_eq!(result["status"], "wrong_answer");
    assert_eq!(result["tests"][2]["status"], "skipped");
    assert_eq!(result["tests"][2]["run_status"], serde_json::Value::Null);
    assert_eq!(
        result["summary"]["verdicts"],
        json!({"accepted": 1, "wrong_answer": 1, "skipped": 1})
    );
}

#[test]
fn two_hundred_tests_in_one_submission() {
    let tests: Vec<(String, String, String)> = (0..200)
        .map(|i| (i.to_string(), format!("{i}\n"), format!("{}\n", i * i)))
        .collect();
    let borrowed: Vec<(&str, &str, &str)> = tests
        .iter()
        .map(|(n, i, o)| (n.as_str(), i.as_str(), o.as_str()))
        .collect();
    let dir = tests_dir(&borrowed);
    let (exit, result) = judge(
        "bash",
        "main.sh",
        "read n; echo $((n * n))",
        dir.path(),
        &[],
    );
    assert_eq!(exit, Some(0), "{}", result["message"]);
    assert_eq!(result["summary"]["verdicts"], json!({"accepted": 200}));
}

#[test]
fn submissions_over_the_api_in_every_language() {
    let server = Server::start(&["--queue-timeout-ms", "900000"]);
    let hello: &[(&str, &str)] = &[
        ("python", "print(input().upper())"),
        (
            "node",
            "process.stdin.on('data', d => process.stdout.write(d.toString().toUpperCase()))",
        ),
        ("bash", "tr a-z A-Z"),
        (
            "go",
            "package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n\t\"strings\"\n)\n\nfunc main() {\n\tline, _ := bufio.NewReader(os.Stdin).ReadString('\\n')\n\tfmt.Print(strings.ToUpper(line))\n}\n",
        ),
        (
            "rust",
            "fn main() {\n    let mut s = String::new();\n    std::io::stdin().read_line(&mut s).unwrap();\n    print!(\"{}\", s.to_uppercase());\n}\n",
        ),
        (
            "c",
            "#include <stdio.h>\n#include <ctype.h>\nint main(void) { int c; while ((c = getchar()) != EOF) putchar(toupper(c)); }\n",
        ),
        (
            "cpp",
            "#include <iostream>\n#include <string>\n#include <cctype>\nint main() { std::string s; std::getline(std::cin, s); for (auto &c : s) c = std::toupper(c); std::cout << s << std::endl; }\n",
        ),
        (
            "java",
            "import java.util.Scanner;\npublic class Main {\n    public static void main(String[] a) {\n        System.out.println(new Scanner(System.in).nextLine().toUpperCase());\n    }\n}\n",
        ),
    ];
    let broken: &[(&str, &str)] = &[
        ("go", "package main\n\nfunc main() { undefined() }\n"),
        ("rust", "fn main() { let x: u8 = \"no\"; }\n"),
        ("c", "int main(void) { return nope; }\n"),
        ("cpp", "int main() { return nope; }\n"),
        (
            "java",
            "public class Main { public static void main(String[] a) { int x = \"no\"; } }\n",
        ),
    ];
    // Generous limits: thirteen submissions share two CPUs, and under
    // emulation the guest charges waiting for a CPU to the program.
    let submission = |language: &str, code: &str| {
        json!({
            "language": language,
            "files": [{ "content": code }],
            "limits": { "run": { "wall_time_ms": 120000, "cpu_time_ms": 120000 } },
            "tests": [
                { "name": "a", "stdin": "hello\n", "expected_output": "HELLO\n" },
                { "name": "b", "stdin": "judge\n", "expected_output": "JUDGE\n" },
            ],
        })
    };
    let judged: Vec<(String, bool, serde_json::Value)> = std::thread::scope(|scope| {
        let runs: Vec<_> = hello
            .iter()
            .map(|(l, c)| (l, c, true))
            .chain(broken.iter().map(|(l, c)| (l, c, false)))
            .map(|(language, code, compiles)| {
                let server = &server;
                scope.spawn(move || {
                    let response =
                        server.post("/v1/submissions", submission(language, code).to_string());
                    assert_eq!(response.status(), 200, "{language}");
                    let result: serde_json::Value = response.json().unwrap();
                    crate::common::server::check("SubmissionResult", &result);
                    (language.to_string(), compiles, result)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (language, compiles, result) in judged {
        if compiles {
            assert_eq!(result["status"], "accepted", "{language}: {result:#}");
            assert_eq!(result["summary"]["verdicts"]["accepted"], 2, "{language}");
        } else {
            assert_eq!(result["status"], "compile_error", "{language}: {result:#}");
            assert_ne!(result["compile"]["stderr"], "", "{language}");
            for test in result["tests"].as_array().unwrap() {
                assert_eq!(test["status"], "skipped", "{language}: no test runs");
            }
        }
    }
    let metrics = server.metrics();
    assert_eq!(
        server.metric("runner_judge_tests_total{language=\"java\",verdict=\"accepted\"}"),
        2.0,
        "{metrics}"
    );
    assert!(metrics.contains("runner_submission_duration_seconds_count{language=\"rust\"} 2"));
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_submission_streams_an_event_per_test() {
    let server = Server::start(&["--languages", "c"]);
    let body = json!({
        "language": "c",
        "files": [{ "content": SUM_C }],
        "tests": [
            { "name": "one", "stdin": "1 1", "expected_output": "2" },
            { "name": "two", "stdin": "2 2", "expected_output": "4" },
            { "name": "three", "stdin": "x", "expected_output": "0" },
        ],
    });
    let response = server.post("/v1/submissions/stream", body.to_string());
    assert_eq!(response.status(), 200);
    let text = response.text().unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            crate::common::server::check("SubmissionStreamEvent", &event);
            event
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["started", "compiled", "test", "test", "test", "result"],
        "{text}"
    );
    let mut indexes: Vec<u64> = events[2..5]
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);
    let result = &events[5]["result"];
    assert_eq!(
        result["status"], "runtime_error",
        "test three exits 3: {result:#}"
    );
    assert_eq!(result["tests"][2]["exit_code"], 3);
    server.stop(Duration::from_secs(10));
}

#[test]
fn bad_submissions_are_refused_with_the_field_named() {
    let server = Server::start(&["--languages", "python"]);
    let test = |name: &str| json!({ "name": name, "stdin": "", "expected_output": "" });
    let submission = |tests: serde_json::Value, compare: serde_json::Value| {
        json!({
            "language": "python",
            "files": [{ "content": "print()" }],
            "tests": tests,
            "compare": compare,
        })
        .to_string()
    };
    let lines = json!({"mode": "lines"});
    let many: Vec<serde_json::Value> = (0..1001).map(|i| test(&i.to_string())).collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "no tests",
            submission(json!([]), lines.clone()),
            422,
            "no tests",
        ),
        (
            "duplicate names",
            submission(json!([test("a"), test("a")]), lines.clone()),
            422,
            "tests[1].name \"a\" is used twice",
        ),
        (
            "unknown mode",
            submission(json!([test("a")]), json!({"mode": "fuzzy"})),
            422,
            "compare.mode \"fuzzy\" is not one of",
        ),
        (
            "negative tolerance",
            submission(
                json!([test("a")]),
                json!({"mode": "float", "relative_tolerance": -1}),
            ),
            422,
            "relative_tolerance",
        ),
        (
            "a test limit of zero",
            submission(
                json!([{"name": "z", "limits": {"wall_time_ms": 0}}]),
                lines.clone(),
            ),
            422,
            "tests[0] (z): run.wall_time_ms",
        ),
        (
            "too many tests",
            submission(json!(many), lines.clone()),
            413,
            "at most 1000",
        ),
    ];
    for (what, body, status, says) in cases {
        let response = server.post("/v1/submissions", body);
        assert_eq!(response.status().as_u16(), status, "{what}");
        let error: serde_json::Value = response.json().unwrap();
        crate::common::server::check("Error", &error);
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{what}: {error}"
        );
    }
    assert!(
        crate::common::vm_processes(server.pid()).is_empty(),
        "nothing booted"
    );
    server.stop(Duration::from_secs(10));
}

/// A checker for "print two numbers that add up to n": many answers are
/// right. It exits 0 to accept and 1, saying why, to reject.
const SUM_CHECKER: &str = "import sys\nn = int(open(sys.argv[1]).read())\ntry:\n    a, b = map(int, open(sys.argv[2]).read().split())\nexcept ValueError:\n    print('not two numbers')\n    sys.exit(1)\nif a + b != n or a < 0 or b < 0:\n    print(f'{a} + {b} is not {n}')\n    sys.exit(1)\n";

#[test]
fn a_checker_accepts_any_right_answer_and_says_why_it_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let checker = dir.path().join("checker.py");
    std::fs::write(&checker, SUM_CHECKER).unwrap();
    // The expected outputs are one right answer; the program prints another.
    let tests = tests_dir(&[
        ("1", "10\n", "5 5\n"),
        ("2", "3\n", "0 3\n"),
        ("3", "7\n", "3 4\n"),
    ]);
    let checker = checker.to_str().unwrap();
    let with_checker = ["--checker", checker, "--checker-lang", "python"];
    let right = "n = int(input())\nprint(1, n - 1)\n";
    let (exit, result) = judge("python", "main.py", right, tests.path(), &with_checker);
    assert_eq!(exit, Some(0), "{result:#}");
    assert_eq!(result["summary"]["verdicts"], json!({"accepted": 3}));

    let wrong = "n = int(input())\nprint(1, n - 1 if n != 7 else n)\n";
    let (exit, result) = judge("python", "main.py", wrong, tests.path(), &with_checker);
    assert_eq!(exit, Some(1));
    assert_eq!(result["status"], "wrong_answer");
    assert_eq!(result["tests"][2]["status"], "wrong_answer");
    assert_eq!(
        result["tests"][2]["message"],
        "the checker rejected the output: 1 + 7 is not 7"
    );
}

#[test]
fn a_checker_that_fails_is_an_internal_error_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let checker = dir.path().join("checker.c");
    std::fs::write(
        &checker,
        "#include <stdio.h>\nint main(void) { fprintf(stderr, \"checker broke\\n\"); return 3; }\n",
    )
    .unwrap();
    let tests = tests_dir(&[("1", "", "x\n")]);
    let (exit, result) = judge(
        "bash",
        "main.sh",
        "echo x",
        tests.path(),
        &[
            "--checker",
            checker.to_str().unwrap(),
            "--checker-lang",
            "c",
        ],
    );
    assert_eq!(exit, Some(125), "{result:#}");
    assert_eq!(result["status"], "internal_error");
    let message = result["tests"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("exit code 3") && message.contains("checker broke"),
        "{message}"
    );
}

#[test]
fn a_single_run_can_be_judged_by_a_compiled_checker() {
    let dir = tempfile::tempdir().unwrap();
    let checker = dir.path().join("checker.cpp");
    std::fs::write(&checker, "#include <fstream>\nint main(int, char **argv) {\n    std::ifstream out(argv[2]);\n    long x;\n    return (out >> x && x % 2 == 0) ? 0 : 1;\n}\n").unwrap();
    let expected = dir.path().join("expected.txt");
    std::fs::write(&expected, "any even number\n").unwrap();
    let run_with = |code: &str| {
        run(
            &[
                "run",
                "--json",
                "--lang",
                "bash",
                "--expected-output",
                expected.to_str().unwrap(),
                "--checker",
                checker.to_str().unwrap(),
                "--checker-lang",
                "cpp",
                "-c",
                code,
            ],
            b"",
        )
    };
    assert_eq!(run_with("echo 42").json()["status"], "accepted");
    assert_eq!(run_with("echo 41").json()["status"], "wrong_answer");
}

#[test]
fn a_bad_checker_is_refused_before_booting() {
    let server = Server::start(&["--languages", "python"]);
    for (checker, says) in [
        (
            json!({"language": "cobol", "files": [{"content": "x"}]}),
            "compare.checker.language",
        ),
        (
            json!({"language": "python", "files": []}),
            "compare.checker: there are no files",
        ),
    ] {
        let body = json!({
            "language": "python",
            "files": [{ "content": "print(1)" }],
            "expected_output": "1",
            "compare": { "mode": "checker", "checker": checker },
        });
        let response = server.post("/v1/executions", body.to_string());
        assert_eq!(response.status(), 422);
        let error: serde_json::Value = response.json().unwrap();
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    assert!(
        crate::common::vm_processes(server.pid()).is_empty(),
        "nothing booted"
    );
    server.stop(Duration::from_secs(10));
}

/// `source` made unique with a comment: the compile cache's tests start
/// from a miss, however often they run on one state directory.
fn fresh(source: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{source}// {nanos} {}\n", std::process::id())
}

/// The compile cache's entries, newest first.
fn cache_entries() -> Vec<std::path::PathBuf> {
    let dir = crate::common::state_dir().join("compile-cache");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map(|read| read.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.retain(|p| p.join("entry.json").exists());
    entries.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().modified().unwrap()));
    entries
}

/// One test, so that no other test of the cache adds entries meanwhile
/// (the others run with it off).
#[test]
fn the_same_compile_again_comes_from_the_cache_for_its_owner_alone() {
    const ON: &[&str] = &["--set", "compile_cache.enabled=true"];
    let tests = tests_dir(&[("1", "1 2\n", "3\n"), ("2", "40 2\n", "42\n")]);

    // A resubmission: the compile comes from the cache, and runs the same.
    let source = fresh(SUM_C);
    let (_, first) = judge("c", "sum.c", &source, tests.path(), ON);
    assert_eq!(first["status"], "accepted", "{first:#}");
    assert_eq!(first["compile"]["cached"], false, "{first:#}");
    let entry = cache_entries()
        .into_iter()
        .next()
        .expect("the compile was kept");
    let (_, again) = judge("c", "sum.c", &source, tests.path(), ON);
    assert_eq!(again["status"], "accepted", "{again:#}");
    assert_eq!(again["compile"]["cached"], true, "{again:#}");
    assert_eq!(again["compile"]["cpu_time_ms"], 0.0);
    assert!(
        again["compile"]["wall_time_ms"].as_f64().unwrap()
            < first["compile"]["wall_time_ms"].as_f64().unwrap()
    );
    // Off by setting: compiled.
    let (_, off) = judge("c", "sum.c", &source, tests.path(), &[]);
    assert_eq!(off["compile"]["cached"], false, "{off:#}");

    // A damaged entry (here a program that answers wrong) is never run:
    // the program is compiled again, and the entry made anew.
    std::fs::write(entry.join("0"), "#!/bin/sh\necho 4\n").unwrap();
    let (_, damaged) = judge("c", "sum.c", &source, tests.path(), ON);
    assert_eq!(damaged["status"], "accepted", "{damaged:#}");
    assert_eq!(damaged["compile"]["cached"], false, "{damaged:#}");
    let (_, remade) = judge("c", "sum.c", &source, tests.path(), ON);
    assert_eq!(remade["compile"]["cached"], true, "{remade:#}");

    // One execution, then the same again: run without its compile.
    let program = fresh("#include <stdio.h>\nint main(void) { puts(\"built\"); return 0; }\n");
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let done = run(
            &["run", "--json", "--lang", "c", "-c", &program, ON[0], ON[1]],
            b"",
        );
        assert_eq!(done.code(), Some(0), "{}", done.stderr());
        let json = done.json();
        assert_eq!(json["run"]["stdout"], "built\n", "{json:#}");
        outputs.push(json["compile"]["cached"].clone());
    }
    assert_eq!(outputs, [false, true]);

    // Over the API, with keys: alice's compile serves alice, not bob.
    let (alice, alice_entry) = crate::sessions::new_key(&["--name", "alice"]);
    let (bob, bob_entry) = crate::sessions::new_key(&["--name", "bob"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("{alice_entry}\n{bob_entry}")).unwrap();
    let server = Server::start_with_key(
        &["--config", config.to_str().unwrap(), ON[0], ON[1]],
        Some(&alice),
    );
    let program = fresh(SUM_C);
    let body = json!({
        "language": "c",
        "files": [{ "name": "sum.c", "content": program }],
        "stdin": "20 22\n",
    });
    let as_alice = || server.post("/v1/executions", body.to_string());
    let as_bob = || {
        server
            .client
            .post(format!("{}/v1/executions", server.base))
            .bearer_auth(&bob)
            .json(&body)
            .send()
            .unwrap()
    };
    // Two at once: both run right, whether one compile or two.
    let both: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| as_alice().json::<serde_json::Value>().unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for result in &both {
        assert_eq!(result["run"]["stdout"], "42\n", "{result:#}");
    }
    let hit: serde_json::Value = as_alice().json().unwrap();
    assert_eq!(hit["compile"]["cached"], true, "{hit:#}");
    assert_eq!(hit["run"]["stdout"], "42\n");
    crate::common::server::check("ExecutionResult", &hit);
    let bobs: serde_json::Value = as_bob().json().unwrap();
    assert_eq!(bobs["compile"]["cached"], false, "{bobs:#}");
    assert_eq!(bobs["run"]["stdout"], "42\n");
}
