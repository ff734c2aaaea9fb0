//! Sessions over HTTP, in real VMs: one VM serving many executions, its
//! files, one request at a time, and every way a session ends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::server::{Server, check, header};
use crate::common::sessions::{
    command, create, delete, error, exec, get, put, session_vms, stdout,
};

#[test]
fn a_session_keeps_files_and_processes_between_executions() {
    let server = Server::start(&[]);
    let session = create(
        &server,
        json!({ "language": "python", "disk_mib": 8, "env": { "GREETING": "hi" } }),
    );
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("ses_") && id.len() == 36, "{id}");
    assert_eq!(session["state"], "running");
    assert_eq!(session["disk_mib"], 8);

    // A file from the client, read by a program, which writes another.
    let response = put(&server, id, "data/input.txt", b"hello\n".to_vec());
    assert_eq!(response.status(), 204);
    let code = "import os\ntext = open('data/input.txt').read().upper()\nopen('out.txt', 'w').write(text)\nprint(text.strip(), os.environ['GREETING'], os.environ.get('EXTRA'))";
    let first = exec(
        &server,
        id,
        json!({ "files": [{ "content": code }], "env": { "EXTRA": "x" } }),
    );
    assert_eq!(first["status"], "ok", "{first:#}");
    assert_eq!(stdout(&first), "HELLO hi x\n");
    assert_eq!(first["metrics"]["start"], "session");

    // The next execution sees what the first left, and not its environment.
    let second = command(&server, id, "cat out.txt; echo ${EXTRA:-unset}; ls; id -u");
    assert_eq!(
        stdout(&second),
        "HELLO\nunset\ndata\nmain.py\nout.txt\n1000\n"
    );

    // A background process outlives its execution; one that keeps the
    // output pipes open does not hold the execution past the drain time.
    let started = command(&server, id, "nohup sleep 300 >/dev/null 2>&1 & echo $!");
    let pid = stdout(&started).trim().to_string();
    let held = Instant::now();
    let holding = command(&server, id, "sleep 300 & echo started");
    assert_eq!(holding["status"], "ok", "{holding:#}");
    assert_eq!(stdout(&holding), "started\n");
    assert!(held.elapsed() < Duration::from_secs(60));
    let alive = command(&server, id, &format!("kill -0 {pid} && echo alive"));
    assert_eq!(stdout(&alive), "alive\n");

    // Files back, a listing, removal.
    let response = get(&server, id, "out.txt");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().unwrap().as_ref(), b"HELLO\n");
    let listing: Value = server
        .get(&format!("/v1/sessions/{id}/files"))
        .json()
        .unwrap();
    check("FileListing", &listing);
    let entries = listing["entries"].as_array().unwrap();
    let out = entries.iter().find(|e| e["name"] == "out.txt").unwrap();
    assert_eq!(
        (out["kind"].clone(), out["size"].clone()),
        (json!("file"), json!(6))
    );
    assert_eq!(out["mode"], 0o644);
    let data = entries.iter().find(|e| e["name"] == "data").unwrap();
    assert_eq!(data["kind"], "directory");
    let sub: Value = server
        .get(&format!("/v1/sessions/{id}/files?path=data"))
        .json()
        .unwrap();
    assert_eq!(sub["entries"][0]["name"], "input.txt");
    assert_eq!(
        delete(&server, &format!("/v1/sessions/{id}/files/out.txt")).status(),
        204
    );
    let (status, body) = error(get(&server, id, "out.txt"));
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("file_not_found"))
    );

    // Paths that lead out of the working directory, through the run
    // user's links, or to what is not a file are refused; nothing follows
    // a link as root.
    // So are names no file can have: a NUL byte, a name over 255 bytes
    // (300 letters; 130 é are 260 bytes), and a path through a file; each
    // is an answer, and the session goes on with its files.
    command(&server, id, "ln -s /etc/shadow shadow; ln -s /etc etc");
    let (long, accented) = ("x".repeat(300), "%C3%A9".repeat(130));
    for (path, method) in [
        ("%2E%2E%2Fx", "put"),
        ("shadow", "get"),
        ("etc/passwd", "get"),
        ("etc/evil", "put"),
        ("data", "get"),
        ("a%00b", "put"),
        ("a%00b", "get"),
        (long.as_str(), "put"),
        (accented.as_str(), "put"),
        ("data/input.txt/x", "put"),
    ] {
        let response = match method {
            "put" => put(&server, id, path, b"x".to_vec()),
            _ => get(&server, id, path),
        };
        let (status, body) = error(response);
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_path")),
            "{method} {path}: {body}"
        );
    }
    let untouched = command(&server, id, "test -e /etc/evil || echo untouched");
    assert_eq!(stdout(&untouched), "untouched\n");
    let kept = get(&server, id, "data/input.txt");
    assert_eq!(kept.status(), 200, "the session and its files are there");

    // The disk limit: a body over it, then files that fill it.
    let (status, body) = error(put(&server, id, "big", vec![b'x'; 9 << 20]));
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("file_too_large"))
    );
    assert_eq!(put(&server, id, "a", vec![b'a'; 5 << 20]).status(), 204);
    let (status, body) = error(put(&server, id, "b", vec![b'b'; 5 << 20]));
    assert_eq!(
        (status, body["code"].as_str()),
        (507, Some("disk_full")),
        "{body}"
    );

    // One request at a time: a second one while an execution runs is
    // refused at once, and the session goes on.
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| command(&server, id, "sleep 4; echo slept"));
        std::thread::sleep(Duration::from_millis(1500));
        let (status, body) = error(server.post(
            &format!("/v1/sessions/{id}/executions"),
            json!({ "command": "true" }).to_string(),
        ));
        assert_eq!((status, body["code"].as_str()), (409, Some("session_busy")));
        let (status, _) = error(put(&server, id, "c", b"c".to_vec()));
        assert_eq!(status, 409);
        assert_eq!(stdout(&slow.join().unwrap()), "slept\n");
    });

    // Wrong requests, refused before they reach the VM.
    let (status, body) = error(server.post(
        &format!("/v1/sessions/{id}/executions"),
        json!({ "language": "bash", "command": "true" }).to_string(),
    ));
    assert_eq!(status, 422);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("this session runs python")
    );
    let (status, _) = error(server.post(
        &format!("/v1/sessions/{id}/executions"),
        json!({ "limits": { "run": { "memory_mib": 4096 } }, "command": "true" }).to_string(),
    ));
    assert_eq!(status, 422);

    // What the server says of it, then its end.
    let info: Value = server.get(&format!("/v1/sessions/{id}")).json().unwrap();
    check("Session", &info);
    assert_eq!(info["executions"], 8);
    let list: Value = server.get("/v1/sessions").json().unwrap();
    assert_eq!(list["sessions"][0]["id"], id);
    assert_eq!(delete(&server, &format!("/v1/sessions/{id}")).status(), 204);
    let (status, body) = error(server.get(&format!("/v1/sessions/{id}")));
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("session_not_found"))
    );
    let (status, _) = error(server.post(
        &format!("/v1/sessions/{id}/executions"),
        json!({ "command": "true" }).to_string(),
    ));
    assert_eq!(status, 404);
    assert_eq!(session_vms(&server, id), Vec::<String>::new());
    server.stop(Duration::from_secs(30));
}

#[test]
fn every_execution_in_a_session_finds_the_runtime_prestarted_and_up_to_date() {
    let server = Server::start(&[]);
    let session = create(&server, json!({ "language": "python" }));
    let id = session["id"].as_str().unwrap();
    let code = |code: &str, args: Value| json!({ "files": [{ "content": code }], "args": args });
    let ran = |result: &Value, out: &str, prestarted: bool| {
        assert_eq!(result["status"], "ok", "{result:#}");
        assert_eq!(stdout(result), out, "{result:#}");
        assert_eq!(result["run"]["prestarted"], prestarted, "{result:#}");
    };

    // The snapshot's runtime takes the first execution; the agent starts
    // another for the next while the session waits.
    let echo = "import sys; print(sys.argv[1:])";
    ran(
        &exec(&server, id, code(echo, json!(["a"]))),
        "['a']\n",
        true,
    );
    ran(
        &exec(&server, id, code(echo, json!(["b"]))),
        "['b']\n",
        true,
    );

    // A package installed by an execution (here by hand, as
    // `pip install --user` would) is seen by the next: its runtime started
    // after the user's site directory appeared.
    let install = "import os, site\nd = site.getusersitepackages()\nos.makedirs(d, exist_ok=True)\nopen(os.path.join(d, 'made_here.py'), 'w').write('X = 1\\n')\nprint(os.path.relpath(d, os.environ['HOME']))";
    let installed = exec(&server, id, code(install, json!([])));
    assert_eq!(installed["status"], "ok", "{installed:#}");
    let site = stdout(&installed).trim().to_string();
    assert!(site.starts_with(".local/lib/python3."), "{site}");
    let import = |module: &str| {
        code(
            &format!("import {module}; print({module}.__name__)"),
            json!([]),
        )
    };
    ran(&exec(&server, id, import("made_here")), "made_here\n", true);

    // A `.pth` put by the client counts only at an interpreter's start-up:
    // the waiting runtime, started before it, is not used.
    let response = put(
        &server,
        id,
        &format!("{site}/extra.pth"),
        b"/home/runner/extra\n".to_vec(),
    );
    assert_eq!(response.status(), 204);
    let response = put(&server, id, "extra/via_pth.py", b"".to_vec());
    assert_eq!(response.status(), 204);
    ran(&exec(&server, id, import("via_pth")), "via_pth\n", false);
    ran(&exec(&server, id, import("via_pth")), "via_pth\n", true);

    // A command does not fit the runtime; the execution after it finds one.
    let listed = command(&server, id, "ls extra/via_pth.py");
    assert_eq!(stdout(&listed), "extra/via_pth.py\n", "{listed:#}");
    assert_eq!(listed["run"]["prestarted"], false, "{listed:#}");
    ran(
        &exec(&server, id, code(echo, json!(["c"]))),
        "['c']\n",
        true,
    );

    // Reading files, and writing data outside the hidden entries of home,
    // leave the waiting runtime in place.
    assert_eq!(get(&server, id, "extra/via_pth.py").status(), 200);
    let response = put(&server, id, "data/input.csv", b"1,2\n".to_vec());
    assert_eq!(response.status(), 204);
    ran(
        &exec(&server, id, code(echo, json!(["d"]))),
        "['d']\n",
        true,
    );
    assert_eq!(delete(&server, &format!("/v1/sessions/{id}")).status(), 204);

    // The same holds for the snapshot's runtime, before a first execution.
    let other = create(&server, json!({ "language": "python" }));
    let other = other["id"].as_str().unwrap();
    let response = put(
        &server,
        other,
        &format!("{site}/extra.pth"),
        b"/home/runner/extra\n".to_vec(),
    );
    assert_eq!(response.status(), 204);
    let response = put(&server, other, "extra/via_pth.py", b"".to_vec());
    assert_eq!(response.status(), 204);
    ran(&exec(&server, other, import("via_pth")), "via_pth\n", false);
    assert_eq!(
        delete(&server, &format!("/v1/sessions/{other}")).status(),
        204
    );

    // And for a one-shot execution whose files put a `.pth` in place.
    let one_shot = server.execute(&json!({
        "language": "python",
        "files": [
            { "content": "import via_pth; print(via_pth.__name__)" },
            { "name": format!("{site}/extra.pth"), "content": "/home/runner/extra\n" },
            { "name": "extra/via_pth.py", "content": "" },
        ],
    }));
    ran(&one_shot, "via_pth\n", false);
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_runtime_slow_to_prestart_again_is_not_waited_for() {
    let server = Server::start(&[]);
    let session = create(&server, json!({ "language": "python" }));
    let id = session["id"].as_str().unwrap();
    // An execution makes every later interpreter's start-up take 6 s (the
    // agent waits 3 s for the runtime it prestarts again).
    let slow = "import os, site\nd = site.getusersitepackages()\nos.makedirs(d, exist_ok=True)\nopen(os.path.join(d, 'usercustomize.py'), 'w').write('import time; time.sleep(6)\\n')";
    let made = exec(&server, id, json!({ "files": [{ "content": slow }] }));
    assert_eq!(made["status"], "ok", "{made:#}");
    assert_eq!(made["run"]["prestarted"], true, "{made:#}");

    // The next execution does not wait for the runtime still starting: it
    // runs in a fresh interpreter (as slow to start, and right).
    let next = exec(
        &server,
        id,
        json!({
            "files": [{ "content": "print('fresh')" }],
            "limits": { "run": { "wall_time_ms": 60000 } }
        }),
    );
    assert_eq!(next["status"], "ok", "{next:#}");
    assert_eq!(stdout(&next), "fresh\n");
    // gVisor shows no process's system call: a runtime that sleeps
    // without CPU time is taken as waiting, and this one is handed the
    // run (right, but after its start-up; see "The environment").
    let prestarted = crate::common::gvisor();
    assert_eq!(next["run"]["prestarted"], prestarted, "{next:#}");

    // Undone by a command (which does not wait either); once the runtimes
    // that were not waited for got ready, they were discarded: no Python
    // is left in the VM.
    let undone = exec(
        &server,
        id,
        json!({
            "command": "rm .local/lib/python3.*/site-packages/usercustomize.py && sleep 8 && ps -C python3 --no-headers | wc -l",
            "limits": { "run": { "wall_time_ms": 60000 } }
        }),
    );
    assert_eq!(stdout(&undone), "0\n", "{undone:#}");
    let back = exec(
        &server,
        id,
        json!({ "files": [{ "content": "print('back')" }] }),
    );
    assert_eq!(stdout(&back), "back\n");
    assert_eq!(back["run"]["prestarted"], true, "{back:#}");
    assert_eq!(delete(&server, &format!("/v1/sessions/{id}")).status(), 204);
    server.stop(Duration::from_secs(30));
}

#[test]
fn sessions_end_when_their_vm_dies_when_idle_and_at_capacity() {
    // One VM at a time: a running session holds it. Idle sessions end
    // rather than pause (see the next test for pausing).
    let server = Server::start(&[
        "--set",
        "max_vms=1",
        "--set",
        "sessions.pause_when_idle=false",
    ]);
    let first = create(&server, json!({ "language": "bash" }));
    let id = first["id"].as_str().unwrap();
    command(&server, id, "echo kept > file");

    // No room for a second session: 429 at once, with Retry-After.
    let response = server.post("/v1/sessions", json!({ "language": "bash" }).to_string());
    let retry = header(&response, "retry-after");
    let (status, body) = error(response);
    assert_eq!((status, body["code"].as_str()), (429, Some("no_capacity")));
    assert!(retry.parse::<u64>().unwrap() >= 1);

    // Its VM dies: the next execution says so, and the session has failed.
    let vms = session_vms(&server, id);
    assert_eq!(vms.len(), 1, "{vms:?}");
    let qemu: i32 = vms[0].split(':').next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let lost = command(&server, id, "cat file");
    assert_eq!(lost["status"], "internal_error", "{lost:#}");
    let info: Value = server.get(&format!("/v1/sessions/{id}")).json().unwrap();
    check("Session", &info);
    assert_eq!(info["state"], "failed");
    assert_eq!(info["ended"]["reason"], "failed");
    let (status, body) = error(server.post(
        &format!("/v1/sessions/{id}/executions"),
        json!({ "command": "cat file" }).to_string(),
    ));
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("session_failed"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("files are gone"),
        "{body}"
    );

    // Its place is free again. A session idle past its timeout ends.
    let idle = create(&server, json!({ "language": "bash", "idle_timeout_s": 2 }));
    let idle_id = idle["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info: Value = server
            .get(&format!("/v1/sessions/{idle_id}"))
            .json()
            .unwrap();
        if info["state"] != "running" || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(info["state"], "ended", "{info:#}");
    assert_eq!(info["ended"]["reason"], "idle");
    let (status, body) = error(server.post(
        &format!("/v1/sessions/{idle_id}/executions"),
        json!({ "command": "true" }).to_string(),
    ));
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("session_ended"))
    );
    assert!(
        server
            .metrics()
            .contains("runner_sessions{state=\"ended\"} 1")
    );

    // Bad sessions are refused before anything boots.
    for (request, code) in [
        (json!({ "language": "cobol" }), "unknown_language"),
        (
            json!({ "language": "bash", "disk_mib": 0 }),
            "invalid_request",
        ),
        (
            json!({ "language": "bash", "idle_timeout_s": 999999 }),
            "invalid_request",
        ),
        (
            json!({ "language": "bash", "colour": "red" }),
            "invalid_request",
        ),
    ] {
        let (_, body) = error(server.post("/v1/sessions", request.to_string()));
        assert_eq!(body["code"], code, "{request}: {body}");
    }
    assert_eq!(session_vms(&server, id), Vec::<String>::new());
    assert_eq!(session_vms(&server, idle_id), Vec::<String>::new());

    // A one-shot execution takes a command too.
    let result = server.execute(&json!({
        "language": "bash", "command": "echo \"$0 $1\"", "args": ["one"]
    }));
    assert_eq!(result["run"]["stdout"], "sh one\n");

    // A session still running when the server stops ends with it.
    create(&server, json!({ "language": "bash" }));
    server.stop(Duration::from_secs(30));
}

#[test]
fn runner_session_is_a_client_of_the_server() {
    let server = Server::start(&[]);
    let session = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["session", "--server", server.base.as_str()];
        all.extend_from_slice(args);
        crate::common::run(&all, stdin)
    };
    let created = session(&["create", "--lang", "bash", "-e", "WHO=session"], b"");
    assert_eq!(created.code(), Some(0), "{}", created.stderr());
    let id = created.stdout().trim().to_string();
    assert!(id.starts_with("ses_"), "{id}");

    // exec streams the output and exits as the program did.
    let ran = session(
        &[
            "exec",
            &id,
            "--command",
            "read x; echo \"$x $WHO $1\"; echo err >&2; exit 3",
            "--",
            "arg",
        ],
        b"in\n",
    );
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    assert_eq!(ran.stdout(), "in session arg\n");
    assert!(ran.stderr().contains("err"), "{}", ran.stderr());

    // Files both ways, and a listing.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data.txt");
    std::fs::write(&local, "42\n").unwrap();
    let to = format!("{id}:in/data.txt");
    assert_eq!(
        session(&["cp", local.to_str().unwrap(), &to], b"").code(),
        Some(0)
    );
    let doubled = session(
        &[
            "exec",
            &id,
            "--command",
            "echo $(( $(cat in/data.txt) * 2 )) > out.txt",
        ],
        b"",
    );
    assert_eq!(doubled.code(), Some(0), "{}", doubled.stderr());
    let back = session(&["cp", &format!("{id}:out.txt"), "-"], b"");
    assert_eq!(back.stdout(), "84\n");

    // runner run's flags for the same things: a limit, and files back.
    let slow = session(
        &["exec", &id, "--timeout", "1", "--command", "sleep 5"],
        b"",
    );
    assert_eq!(slow.code(), Some(124), "{}", slow.stderr());
    assert!(
        slow.stderr().contains("time_limit_exceeded"),
        "{}",
        slow.stderr()
    );
    let fetched_dir = tempfile::tempdir().unwrap();
    let fetched = session(
        &[
            "exec",
            &id,
            "-O",
            "out.txt",
            "--output-dir",
            fetched_dir.path().to_str().unwrap(),
            "--command",
            "true",
        ],
        b"",
    );
    assert_eq!(fetched.code(), Some(0), "{}", fetched.stderr());
    let fetched = std::fs::read_to_string(fetched_dir.path().join("out.txt")).unwrap();
    assert_eq!(fetched, "84\n");
    let listed = session(&["ls", &id], b"");
    assert!(listed.stdout().contains("out.txt"), "{}", listed.stdout());
    assert!(listed.stdout().contains("in"), "{}", listed.stdout());
    let missing = session(&["cp", &format!("{id}:nothing"), "-"], b"");
    assert_eq!(missing.code(), Some(2));
    assert!(
        missing.stderr().contains("file_not_found"),
        "{}",
        missing.stderr()
    );

    // Paused and resumed.
    let paused = session(&["pause", &id], b"");
    assert_eq!(paused.code(), Some(0), "{}", paused.stderr());
    assert!(
        paused.stdout().contains("paused:") && paused.stdout().contains("MiB on disk"),
        "{}",
        paused.stdout()
    );
    let listed = session(&["list"], b"");
    assert!(listed.stdout().contains("paused"), "{}", listed.stdout());
    let resumed = session(&["resume", &id], b"");
    assert_eq!(
        resumed.stdout(),
        format!("{id} running\n"),
        "{}",
        resumed.stderr()
    );
    let back = session(&["cp", &format!("{id}:out.txt"), "-"], b"");
    assert_eq!(back.stdout(), "84\n");

    // Gone once removed; a server that is not there is said so.
    assert_eq!(session(&["rm", &id], b"").code(), Some(0));
    let gone = session(&["exec", &id, "--command", "true"], b"");
    assert_eq!(gone.code(), Some(2));
    assert!(
        gone.stderr().contains("session_not_found"),
        "{}",
        gone.stderr()
    );
    let nowhere = crate::common::run(&["session", "--server", "http://127.0.0.1:9", "list"], b"");
    assert_eq!(nowhere.code(), Some(125));
    assert!(
        nowhere.stderr().contains("cannot reach the server"),
        "{}",
        nowhere.stderr()
    );
    server.stop(Duration::from_secs(30));
}

/// A new API key from `runner key new`: the key, and its configuration
/// entry.
pub(crate) fn new_key(args: &[&str]) -> (String, String) {
    let mut all = vec!["key", "new"];
    all.extend_from_slice(args);
    let made = crate::common::run(&all, b"");
    assert_eq!(made.code(), Some(0), "{}", made.stderr());
    let out = made.stdout();
    let key = out
        .lines()
        .find(|l| l.starts_with("rck_"))
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_string();
    let entry = out[out.find("[[api_keys]]").unwrap()..].to_string();
    assert!(
        !entry.contains(&key),
        "the entry holds the key's hash, not the key"
    );
    (key, entry)
}

#[test]
fn an_api_key_owns_its_sessions_and_has_a_limit() {
    let (alice, alice_entry) = new_key(&["--name", "alice", "--max-sessions", "1"]);
    let (bob, bob_entry) = new_key(&["--name", "bob"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("{alice_entry}\n{bob_entry}")).unwrap();
    let server = Server::start_with_key(&["--config", config.to_str().unwrap()], Some(&alice));
    let anonymous = reqwest::blocking::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let as_bob =
        |request: reqwest::blocking::RequestBuilder| request.bearer_auth(&bob).send().unwrap();

    // Without a key, or with one the server does not know: 401, except
    // for the liveness probe.
    for request in [
        anonymous.get(url("/v1/languages")),
        anonymous.get(url("/metrics")),
        anonymous.get(url("/v1/sessions")).bearer_auth("rck_nobody"),
        anonymous
            .get(url("/v1/sessions"))
            .basic_auth("alice", Some(&alice)),
    ] {
        let response = request.send().unwrap();
        assert_eq!(header(&response, "www-authenticate"), "Bearer");
        let (status, body) = error(response);
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    }
    assert_eq!(anonymous.get(url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(as_bob(anonymous.get(url("/v1/languages"))).status(), 200);

    // Alice's session is hers: to bob it does not exist.
    let session = create(&server, json!({ "language": "bash" }));
    let id = session["id"].as_str().unwrap();
    let mine = format!("/v1/sessions/{id}");
    for response in [
        as_bob(anonymous.get(url(&mine))),
        as_bob(anonymous.delete(url(&mine))),
        as_bob(
            anonymous
                .post(url(&format!("{mine}/executions")))
                .json(&json!({ "command": "echo stolen" })),
        ),
        as_bob(anonymous.put(url(&format!("{mine}/files/x"))).body("x")),
        as_bob(anonymous.get(url(&format!("{mine}/files")))),
    ] {
        let (status, body) = error(response);
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("session_not_found")),
            "{body:#}"
        );
    }
    let listed: Value = as_bob(anonymous.get(url("/v1/sessions"))).json().unwrap();
    assert_eq!(listed["sessions"], json!([]), "bob sees none of alice's");
    assert_eq!(
        stdout(&command(&server, id, "echo mine")),
        "mine\n",
        "and alice's session still works"
    );

    // Alice may have one at a time; bob's own limit is the server's.
    let (status, body) =
        error(server.post("/v1/sessions", json!({ "language": "bash" }).to_string()));
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_sessions")),
        "{body:#}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("alice"),
        "{body:#}"
    );
    let response = as_bob(
        anonymous
            .post(url("/v1/sessions"))
            .json(&json!({ "language": "bash" })),
    );
    assert_eq!(response.status(), 201);
    let bobs: Value = response.json().unwrap();
    let listed: Value = server.get("/v1/sessions").json().unwrap();
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id], "alice sees only hers");

    // The CLI sends its key; without one it is told it needs one.
    let session = |args: &[&str], key: Option<&str>| {
        let mut all = vec!["session", "--server", server.base.as_str()];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = key.map(|k| ("RUNNER_API_KEY", k)).into_iter().collect();
        crate::common::run_with_env(&all, b"", &env)
    };
    let listed = session(&["list"], Some(&alice));
    assert_eq!(listed.code(), Some(0), "{}", listed.stderr());
    assert!(listed.stdout().contains(id), "{}", listed.stdout());
    let refused = session(&["list"], None);
    assert_eq!(refused.code(), Some(2));
    assert!(refused.stderr().contains("API key"), "{}", refused.stderr());

    // Deleting gives alice her place back.
    assert_eq!(delete(&server, &mine).status(), 204);
    let again = create(&server, json!({ "language": "bash" }));
    assert_eq!(
        delete(
            &server,
            &format!("/v1/sessions/{}", again["id"].as_str().unwrap())
        )
        .status(),
        204
    );
    let bobs = format!("/v1/sessions/{}", bobs["id"].as_str().unwrap());
    assert_eq!(as_bob(anonymous.delete(url(&bobs))).status(), 204);
    server.stop(Duration::from_secs(60));
}

/// This machine's address on its way out, if it has one besides loopback.
fn outward_address() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks a route.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}

#[test]
#[cfg_attr(
    no_outward_address,
    ignore = "this machine has no address besides loopback to call from"
)]
fn without_api_keys_only_this_machine_is_served() {
    let outward = outward_address().expect("an address besides loopback");
    let server = Server::start(&["--listen", "0.0.0.0:0"]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let client = reqwest::blocking::Client::new();
    let near = client
        .get(format!("http://127.0.0.1:{port}/v1/languages"))
        .send()
        .unwrap();
    assert_eq!(near.status(), 200);
    let far = client
        .get(format!("http://{outward}:{port}/v1/languages"))
        .send()
        .unwrap();
    let (status, body) = error(far);
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body:#}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("api_keys"),
        "{body:#}"
    );
    let logged = server.log_lines().iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("no API keys"))
    });
    assert!(logged, "the server warns that it serves this machine only");
    server.stop(Duration::from_secs(60));
}

#[test]
fn a_killed_servers_running_sessions_are_reported_lost_and_paused_ones_go_on() {
    let (home, state_dir) = own_state_dir();
    let args = ["--set", &state_dir, "--set", "prepare_snapshots=false"];
    let first = Server::start(&args);
    let session = create(&first, json!({ "language": "bash" }));
    let id = session["id"].as_str().unwrap().to_string();
    assert_eq!(
        stdout(&command(&first, &id, "echo here > f; cat f")),
        "here\n"
    );
    let records = home.path().join("sessions");
    let recorded = |id: &str| {
        std::fs::read_dir(&records)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(id))
            })
            .unwrap_or(false)
    };
    assert!(recorded(&id), "a running session is recorded");
    // A paused one, beside it.
    let paused = create(&first, json!({ "language": "bash" }));
    let paused_id = paused["id"].as_str().unwrap().to_string();
    command(&first, &paused_id, "echo still here > f");
    assert_eq!(pause(&first, &paused_id)["state"], "paused");
    // Another server on the same state directory leaves alone what a
    // living server holds, and its stop takes nothing with it.
    let bystander = Server::start(&args);
    assert_eq!(
        bystander.get(&format!("/v1/sessions/{paused_id}")).status(),
        404
    );
    bystander.stop(Duration::from_secs(30));
    assert_eq!(self::info(&first, &paused_id)["state"], "paused");
    let pid = first.pid();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // The VM died with its server; the next server sweeps what is left and
    // tells the owner what happened.
    let second = Server::start(&args);
    assert_eq!(crate::common::vm_processes(pid), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(home.path().join("run"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}."))
        })
        .collect();
    assert!(left.is_empty(), "run directories left: {left:?}");
    assert!(!recorded(&id), "the record was taken");
    let info: Value = second.get(&format!("/v1/sessions/{id}")).json().unwrap();
    check("Session", &info);
    assert_eq!(info["state"], "ended", "{info:#}");
    assert_eq!(info["ended"]["reason"], "lost", "{info:#}");
    assert_eq!(info["language"], "bash");
    let (status, body) = error(second.post(
        &format!("/v1/sessions/{id}/executions"),
        json!({ "command": "cat f" }).to_string(),
    ));
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("session_ended")),
        "{body:#}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("stopped unexpectedly"),
        "{body:#}"
    );
    let listed: Value = second.get("/v1/sessions").json().unwrap();
    assert!(listed.to_string().contains(&id), "{listed:#}");
    // The paused session outlived the killed server, and goes on.
    assert_eq!(self::info(&second, &paused_id)["state"], "paused");
    assert_eq!(
        stdout(&command(&second, &paused_id, "cat f")),
        "still here\n"
    );
    assert_eq!(delete(&second, &format!("/v1/sessions/{id}")).status(), 204);
    assert_eq!(second.get(&format!("/v1/sessions/{id}")).status(), 404);
    second.stop(Duration::from_secs(60));
}

/// A state directory of its own, sharing the images and snapshots, so that
/// no other test's server takes its sessions; and the server arguments
/// that use it.
fn own_state_dir() -> (tempfile::TempDir, String) {
    let home = tempfile::tempdir().unwrap();
    for shared in ["images", "snapshots", "accel.json"] {
        std::os::unix::fs::symlink(
            crate::common::state_dir().join(shared),
            home.path().join(shared),
        )
        .unwrap();
    }
    let state_dir = format!("state_dir={}", home.path().display());
    (home, state_dir)
}

fn info(server: &Server, id: &str) -> Value {
    let info: Value = server.get(&format!("/v1/sessions/{id}")).json().unwrap();
    check("Session", &info);
    info
}

fn pause(server: &Server, id: &str) -> Value {
    let response = server.post(&format!("/v1/sessions/{id}/pause"), "");
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{body:#}");
    check("Session", &body);
    body
}

#[test]
fn a_paused_session_outlives_its_server_and_resumes_as_it_was() {
    let (home, state_dir) = own_state_dir();
    let args = ["--set", &state_dir, "--set", "prepare_snapshots=false"];
    let first = Server::start(&args);
    let session = create(&first, json!({ "language": "python" }));
    let id = session["id"].as_str().unwrap().to_string();
    // What the session changed: a file of random bytes, a counter that a
    // background process keeps writing, and that process.
    let mut random = vec![0u8; 1 << 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    assert_eq!(put(&first, &id, "random.bin", random.clone()).status(), 204);
    let started = command(
        &first,
        &id,
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > count; sleep 0.2; done' >/dev/null 2>&1 & echo $!",
    );
    let pid = stdout(&started).trim().to_string();
    let counting = command(&first, &id, "sleep 1; cat count");
    let before: u64 = stdout(&counting).trim().parse().unwrap();

    let paused = pause(&first, &id);
    assert_eq!(paused["state"], "paused", "{paused:#}");
    let disk_bytes = paused["paused"]["disk_bytes"].as_u64().unwrap();
    let vm_bytes = paused["vm_memory_mib"].as_u64().unwrap() << 20;
    // A delta over the snapshot: the megabyte written and what else
    // changed, far from the VM's size.
    assert!(
        (1 << 20) < disk_bytes && disk_bytes < vm_bytes / 2,
        "{disk_bytes} bytes saved of a {vm_bytes}-byte VM"
    );
    assert_eq!(session_vms(&first, &id), Vec::<String>::new());
    assert_eq!(
        pause(&first, &id)["state"],
        "paused",
        "pausing again is no change"
    );
    let metrics = first.get("/metrics").text().unwrap();
    assert!(
        metrics.contains("runner_sessions{state=\"paused\"} 1"),
        "{metrics}"
    );
    let saved = home.path().join("sessions/paused").join(&id);
    assert!(saved.join("state").exists());
    first.stop(Duration::from_secs(60));

    // The next server has it, paused; it resumes as it was.
    let second = Server::start(&args);
    assert_eq!(info(&second, &id)["state"], "paused");
    let response = second.post(&format!("/v1/sessions/{id}/resume"), "");
    assert_eq!(response.status(), 200);
    let resumed: Value = response.json().unwrap();
    check("Session", &resumed);
    assert_eq!(resumed["state"], "running", "{resumed:#}");
    assert!(resumed.get("paused").is_none(), "{resumed:#}");
    assert!(!saved.exists(), "the saved VM is removed once resumed");
    let after = command(
        &second,
        &id,
        &format!(
            "kill -0 {pid} && echo alive; a=$(cat count); sleep 1; b=$(cat count); echo $a $b"
        ),
    );
    let out = stdout(&after);
    assert!(out.starts_with("alive\n"), "{after:#}");
    let counts: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        before <= counts[0] && counts[0] < counts[1],
        "the counter went on from {before}: {counts:?}"
    );
    let response = get(&second, &id, "random.bin");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().unwrap().as_ref() == random.as_slice());

    // A request for a paused session resumes it first; deleting a paused
    // session removes what was saved.
    pause(&second, &id);
    let python = exec(
        &second,
        &id,
        json!({ "files": [{ "content": "print(open('count').read().strip().isdigit())" }] }),
    );
    assert_eq!(stdout(&python), "True\n", "{python:#}");
    assert_eq!(info(&second, &id)["state"], "running");
    pause(&second, &id);
    assert!(saved.exists());
    assert_eq!(delete(&second, &format!("/v1/sessions/{id}")).status(), 204);
    assert!(!saved.exists(), "a deleted session leaves nothing");

    // A session bigger than its language's snapshot boots cold; paused,
    // it keeps all it has in memory, and comes back as well.
    let big = create(&second, json!({ "language": "bash", "memory_mib": 512 }));
    assert_eq!(big["start"], "cold", "{big:#}");
    let big_id = big["id"].as_str().unwrap();
    command(&second, big_id, "echo cold > file");
    let paused = pause(&second, big_id);
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(stdout(&command(&second, big_id, "cat file")), "cold\n");
    assert_eq!(
        delete(&second, &format!("/v1/sessions/{big_id}")).status(),
        204
    );

    // A session idle past its timeout is paused, and goes on when asked.
    let idle = create(&second, json!({ "language": "bash", "idle_timeout_s": 2 }));
    let idle_id = idle["id"].as_str().unwrap();
    command(&second, idle_id, "echo kept > file");
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let state = info(&second, idle_id)["state"].clone();
        if state != "running" || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(state, "paused");
    assert_eq!(session_vms(&second, idle_id), Vec::<String>::new());
    assert_eq!(stdout(&command(&second, idle_id, "cat file")), "kept\n");
    second.stop(Duration::from_secs(60));
    let left: Vec<_> = std::fs::read_dir(home.path().join("sessions/paused"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "only paused sessions stay: {left:?}");
}
