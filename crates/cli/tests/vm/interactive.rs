//! Interactive executions over a WebSocket, in real VMs: input typed while
//! the program runs, a terminal with its signals and size, and the same in
//! a session.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::common::server::{Server, check};

/// How long a test waits for what a program should print.
const PATIENCE: Duration = Duration::from_secs(60);

/// A client of one interactive execution: what came back so far.
struct Client {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    output: String,
    events: Vec<Value>,
}

impl Client {
    /// Connects to `path` of `server` and sends `request`.
    fn open(server: &Server, path: &str, request: Value) -> Client {
        let url = format!("{}{path}", server.base.replacen("http", "ws", 1));
        let (mut socket, _) = tungstenite::connect(url).unwrap();
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        socket.send(Message::text(request.to_string())).unwrap();
        Client {
            socket,
            output: String::new(),
            events: Vec::new(),
        }
    }

    /// The next event, if one comes within the read timeout.
    fn poll(&mut self) -> Option<Value> {
        match self.socket.read() {
            Ok(Message::Text(text)) => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                if event["type"] == "output" {
                    self.output += event["data"].as_str().unwrap();
                }
                self.events.push(event.clone());
                Some(event)
            }
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("the socket failed: {e}; output so far: {:?}", self.output),
        }
    }

    /// Reads until the output holds `text`.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.output.contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in {:?}; events: {:#?}",
                self.output,
                self.events
            );
            if let Some(event) = self.poll() {
                assert_ne!(event["type"], "result", "ended without {text:?}: {event:#}");
            }
        }
    }

    /// Reads until an event of `kind` comes.
    fn until(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no {kind} event: {:#?}",
                self.events
            );
            if let Some(event) = self.poll() {
                if event["type"] == kind {
                    return event;
                }
            }
        }
    }

    fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .unwrap();
    }

    fn type_bytes(&mut self, bytes: &[u8]) {
        self.socket.send(Message::binary(bytes.to_vec())).unwrap();
    }

    /// The result, once the execution is over; the server closes after it.
    fn result(&mut self) -> Value {
        let result = self.until("result")["result"].clone();
        check("ExecutionResult", &result);
        result
    }
}

#[test]
fn a_program_takes_input_while_it_runs() {
    let server = Server::start(&[]);
    let code = "import sys\n\
                name = input('name? ')\n\
                print(f'hello {name}', flush=True)\n\
                print(sum(int(line) for line in sys.stdin))\n";
    let mut client = Client::open(
        &server,
        "/v1/executions/ws",
        json!({ "language": "python", "files": [{ "content": code }] }),
    );
    assert_eq!(client.until("started")["language"], "python");
    // The program waits for its input: it asked, and nothing came yet.
    client.expect("name? ");
    client.type_bytes(b"bob\n");
    client.expect("hello bob\n");
    // A message the endpoint does not take is refused, and the rest goes
    // on.
    client.send(json!({ "type": "paste", "data": "x" }));
    let error = client.until("error");
    assert_eq!(error["code"], "invalid_request", "{error:#}");
    client.send(json!({ "type": "stdin", "data": "1\n2\n" }));
    client.send(json!({ "type": "stdin_end" }));
    let result = client.result();
    assert_eq!(result["status"], "ok", "{result:#}");
    assert_eq!(result["run"]["stdout"], "name? hello bob\n3\n");

    // A request that is refused says so, and the socket closes.
    let mut refused = Client::open(
        &server,
        "/v1/executions/ws",
        json!({ "language": "cobol", "files": [{ "content": "x" }] }),
    );
    let error = refused.until("error");
    assert_eq!(
        (error["code"].as_str(), error["status"].as_u64()),
        (Some("unknown_language"), Some(422)),
        "{error:#}"
    );

    // A client that goes away stops its execution and frees its VM.
    let mut leaving = Client::open(
        &server,
        "/v1/executions/ws",
        json!({ "language": "python", "files": [{ "content": "input('waiting')" }],
                "limits": { "run": { "wall_time_ms": 120000 } } }),
    );
    let trace_id = leaving.until("started")["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    leaving.expect("waiting");
    let vms = || {
        crate::common::vm_processes(server.pid())
            .into_iter()
            .filter(|vm| vm.contains(&trace_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(vms().len(), 1, "its VM runs");
    drop(leaving);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vms().is_empty() {
        assert!(Instant::now() < deadline, "the VM outlived its client");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_terminal_takes_keys_signals_and_a_new_size() {
    let server = Server::start(&[]);
    let code = r#"
import os
print(os.isatty(0), os.isatty(1), os.get_terminal_size(), flush=True)
while True:
    try:
        line = input(">>> ")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        continue
    except EOFError:
        print("bye")
        break
    if line == "size":
        print(os.get_terminal_size(), flush=True)
    elif line == "spin":
        try:
            while True:
                pass
        except KeyboardInterrupt:
            print("stopped spinning", flush=True)
    else:
        print(eval(line), flush=True)
"#;
    let mut client = Client::open(
        &server,
        "/v1/executions/ws",
        json!({
            "language": "python",
            "files": [{ "content": code }],
            "pty": { "rows": 24, "cols": 80 },
            "limits": { "run": { "wall_time_ms": 120000 } },
        }),
    );
    client.expect("True True os.terminal_size(columns=80, lines=24)");
    client.expect(">>> ");
    // The terminal echoes what is typed, and ends lines with CR LF.
    client.type_bytes(b"6*7\n");
    client.expect("6*7\r\n42\r\n");
    client.type_bytes(b"spin\n");
    client.expect("spin\r\n");
    std::thread::sleep(Duration::from_millis(500));
    client.send(json!({ "type": "signal", "signal": "interrupt" }));
    client.expect("stopped spinning");
    client.send(json!({ "type": "resize", "rows": 40, "cols": 120 }));
    client.type_bytes(b"size\n");
    client.expect("columns=120, lines=40");
    // Ctrl-C typed is the same as the signal.
    client.type_bytes(b"\x03");
    client.expect("interrupted");
    client.send(json!({ "type": "stdin_end" }));
    let result = client.result();
    assert_eq!(result["run"]["stderr"], "", "one stream on a terminal");
    // gVisor's terminal has no Ctrl-D: the end of input hangs it up (see
    // "The environment").
    if crate::common::gvisor() {
        assert_eq!(result["run"]["signal_name"], "SIGHUP", "{result:#}");
        server.stop(Duration::from_secs(30));
        return;
    }
    assert_eq!(result["status"], "ok", "{result:#}");
    assert!(
        result["run"]["stdout"]
            .as_str()
            .unwrap()
            .ends_with("bye\r\n"),
        "{result:#}"
    );
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_session_runs_an_interactive_program_and_keeps_what_it_did() {
    let server = Server::start(&[]);
    let response = server.post("/v1/sessions", json!({ "language": "bash" }).to_string());
    assert_eq!(response.status(), 201);
    let session: Value = response.json().unwrap();
    let id = session["id"].as_str().unwrap();
    let path = format!("/v1/sessions/{id}/executions/ws");
    let mut client = Client::open(
        &server,
        &path,
        json!({ "command": "echo ready; read x; echo \"got $x\"; echo \"$x\" > kept" }),
    );
    client.expect("ready\n");
    client.type_bytes(b"typed\n");
    let result = client.result();
    assert_eq!(result["status"], "ok", "{result:#}");
    assert_eq!(result["run"]["stdout"], "ready\ngot typed\n");
    let kept: Value = server
        .post(
            &format!("/v1/sessions/{id}/executions"),
            json!({ "command": "cat kept" }).to_string(),
        )
        .json()
        .unwrap();
    assert_eq!(kept["run"]["stdout"], "typed\n", "{kept:#}");

    // A terminal in a session; a session that is not there is an error
    // event.
    let mut terminal = Client::open(
        &server,
        &path,
        json!({ "command": "tty >/dev/null && echo on a terminal; stty size", "pty": { "rows": 30, "cols": 100 } }),
    );
    let result = terminal.result();
    assert_eq!(
        result["run"]["stdout"], "on a terminal\r\n30 100\r\n",
        "{result:#}"
    );
    let mut missing = Client::open(
        &server,
        "/v1/sessions/ses_00000000000000000000000000000000/executions/ws",
        json!({ "command": "true" }),
    );
    let error = missing.until("error");
    assert_eq!(error["code"], "session_not_found", "{error:#}");
    server.stop(Duration::from_secs(30));
}
