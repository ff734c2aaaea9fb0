//! Egress by permission, end to end: real VMs whose programs reach a web
//! server and a package index on this machine through the proxy, and what
//! they may not reach. No test depends on anything outside this machine:
//! the index serves a wheel and an npm tarball made here.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::server::{Server, check};
use crate::common::sessions::{create, exec, stdout};
use serde_json::{Value, json};

/// A web server on this machine serving the files under `root`, which
/// records the paths asked for.
struct Index {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    _root: tempfile::TempDir,
}

impl Index {
    fn start() -> Index {
        let root = tempfile::tempdir().unwrap();
        make_packages(root.path());
        std::fs::write(root.path().join("hello.txt"), "hello through the proxy\n").unwrap();
        std::fs::write(root.path().join("big.bin"), vec![b'x'; 1 << 20]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (dir, log) = (root.path().to_path_buf(), asked.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, log) = (dir.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &dir, &log));
            }
        });
        Index {
            port,
            asked,
            _root: root,
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, root: &Path, asked: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    asked.lock().unwrap().push(path.clone());
    let relative = path.split('?').next().unwrap().trim_start_matches('/');
    let mut file = root.join(relative.replace("%2f", "/").replace("%2F", "/"));
    if file.is_dir() {
        file = ["index.html", "index.json"]
            .iter()
            .map(|name| file.join(name))
            .find(|f| f.exists())
            .unwrap_or(file);
    }
    let (status, body, kind) = match std::fs::read(&file) {
        Ok(body) if !relative.contains("..") => {
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html",
                Some("json") | None => "application/json",
                Some("txt") => "text/plain",
                _ => "application/octet-stream",
            };
            ("200 OK", body, kind)
        }
        _ => ("404 Not Found", b"not here\n".to_vec(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// Makes, under `root`, a Python package index (`simple/demo-pkg/`, a
/// pure-Python wheel) and an npm registry (`demo-pkg` and its tarball),
/// each holding a package `demo-pkg` that says who installed it.
fn make_packages(root: &Path) {
    let script = r#"
import base64, hashlib, io, json, os, sys, tarfile, zipfile
root = sys.argv[1]
def b64(data): return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
files = {
    "demo_pkg/__init__.py": b"GREETING = 'hello from demo-pkg, installed by pip'\n",
    "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
    "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{n},sha256={b64(d)},{len(d)}\n" for n, d in files.items()) + "demo_pkg-1.0.dist-info/RECORD,,\n"
files["demo_pkg-1.0.dist-info/RECORD"] = record.encode()
wheel = io.BytesIO()
with zipfile.ZipFile(wheel, "w") as z:
    for n, d in files.items(): z.writestr(n, d)
wheel = wheel.getvalue()
name = "demo_pkg-1.0-py3-none-any.whl"
os.makedirs(f"{root}/simple/demo-pkg")
os.makedirs(f"{root}/files")
open(f"{root}/files/{name}", "wb").write(wheel)
open(f"{root}/simple/demo-pkg/index.html", "w").write(
    f'<html><body><a href="../../files/{name}#sha256={hashlib.sha256(wheel).hexdigest()}">{name}</a></body></html>')
package = {"name": "demo-pkg", "version": "1.0.0", "main": "index.js"}
tgz = io.BytesIO()
with tarfile.open(fileobj=tgz, mode="w:gz") as t:
    for n, d in {"package/package.json": json.dumps(package).encode(),
                 "package/index.js": b"module.exports = { greeting: 'hello from demo-pkg, installed by npm' };\n"}.items():
        info = tarfile.TarInfo(n); info.size = len(d); info.mode = 0o644
        t.addfile(info, io.BytesIO(d))
tgz = tgz.getvalue()
os.makedirs(f"{root}/demo-pkg/-")
open(f"{root}/demo-pkg/-/demo-pkg-1.0.0.tgz", "wb").write(tgz)
integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
packument = {"name": "demo-pkg", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": {
    **package, "dist": {"tarball": "TARBALL", "shasum": hashlib.sha1(tgz).hexdigest(), "integrity": integrity}}}}
open(f"{root}/demo-pkg/index.json.in", "w").write(json.dumps(packument))
"#;
    let made = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(root)
        .output()
        .expect("python3 on the host makes the test packages");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// Points the npm packument at the index's `port`: npm fetches the
/// tarball from the URL it names.
fn publish_npm(root: &Path, port: u16) {
    let template = std::fs::read_to_string(root.join("demo-pkg/index.json.in")).unwrap();
    let tarball = format!("http://pkgs.test:{port}/demo-pkg/-/demo-pkg-1.0.0.tgz");
    std::fs::write(
        root.join("demo-pkg/index.json"),
        template.replace("TARBALL", &tarball),
    )
    .unwrap();
}

/// A server whose executions may ask for the names under `*.test` and
/// `localhost`, where `pkgs.test` is this machine (the operator's
/// mapping), with a byte limit of `max_bytes`.
fn server(max_bytes: u64) -> Server {
    Server::start(&[
        "--set",
        "network.allow=*.test,localhost",
        "--set",
        "network.hosts=pkgs.test=127.0.0.1",
        "--set",
        &format!("network.max_bytes={max_bytes}"),
    ])
}

fn connections(result: &Value) -> Vec<(String, bool)> {
    result["network"]["connections"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| {
            (
                c["host"].as_str().unwrap().to_string(),
                c["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The program: plain requests through the proxy as `urllib` makes them,
/// then raw ones as a hostile program would, then a direct connection.
const PROBE: &str = r#"
import socket, sys, urllib.error, urllib.request
port = int(sys.argv[1])
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return f"{r.status} {len(r.read())}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
    except Exception as e:
        return f"failed {type(e).__name__}"
def raw(request):
    with socket.create_connection(("127.0.0.1", 3128), timeout=60) as s:
        s.sendall(request.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    lines = answer.decode().splitlines()
    return f"{lines[0]} | {lines[-1]}"
print("allowed:", get(f"http://pkgs.test:{port}/hello.txt"))
print("other name:", get(f"http://other.test:{port}/hello.txt"))
print("metadata address:", raw("CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n"))
print("raw address:", raw(f"GET http://127.0.0.1:{port}/hello.txt HTTP/1.1\r\n\r\n"))
print("private through a name:", raw(f"GET http://localhost:{port}/hello.txt HTTP/1.1\r\n\r\n"))
print("over the byte limit:", get(f"http://pkgs.test:{port}/big.bin"))
try:
    socket.create_connection(("93.184.216.34", 80), timeout=10)
    print("direct: connected")
except OSError as e:
    print("direct:", type(e).__name__)
"#;

#[test]
fn a_program_reaches_the_names_it_was_allowed_and_nothing_else() {
    let index = Index::start();
    let server = server(300_000);
    let result = server.execute(&json!({
        "language": "python",
        "files": [{ "name": "main.py", "content": PROBE }],
        "args": [index.port.to_string()],
        "network": { "allow": ["pkgs.test", "localhost"] },
        "limits": { "run": { "wall_time_ms": 120_000, "cpu_time_ms": 120_000 } },
    }));
    assert_eq!(result["status"], "ok", "{result:#}");
    let out = stdout(&result);
    let line = |label: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in {out}"))
            .trim()
            .to_string()
    };
    assert_eq!(line("allowed:"), "200 24");
    let other = line("other name:");
    assert!(
        other.starts_with("403")
            && other.contains("other.test is not in the execution's network.allow"),
        "{other}"
    );
    let metadata = line("metadata address:");
    assert!(
        metadata.starts_with("HTTP/1.1 403") && metadata.contains("is an address, not a host name"),
        "{metadata}"
    );
    let address = line("raw address:");
    assert!(address.starts_with("HTTP/1.1 403"), "{address}");
    let private = line("private through a name:");
    assert!(
        private.starts_with("HTTP/1.1 403") && private.contains("never connected to"),
        "{private}"
    );
    // Cut at the limit: the program sees the connection end early.
    assert!(line("over the byte limit:").starts_with("failed"), "{out}");
    assert_eq!(line("direct:"), "OSError");

    assert_eq!(
        connections(&result),
        [
            ("pkgs.test".to_string(), true),
            ("other.test".to_string(), false),
            ("169.254.169.254".to_string(), false),
            ("127.0.0.1".to_string(), false),
            ("localhost".to_string(), false),
            ("pkgs.test".to_string(), true),
        ]
    );
    let cut = &result["network"]["connections"][5];
    assert!(
        cut["message"].as_str().unwrap().contains("300000 bytes"),
        "{cut:#}"
    );
    assert!(result["network"]["bytes"].as_u64().unwrap() <= 300_000 + 64 * 1024);
    // Only what was allowed reached the server.
    assert_eq!(index.asked(), ["/hello.txt", "/big.bin"]);

    // Without `network`, nothing listens: no proxy, no way out.
    let none = server.execute(&json!({
        "language": "bash",
        "command": "echo > /dev/tcp/127.0.0.1/3128 && echo reached || echo refused; env | grep -ci proxy",
    }));
    assert_eq!(stdout(&none), "refused\n0\n", "{none:#}");
    assert!(none.get("network").is_none(), "{none:#}");

    // What is not allowed is refused before a VM boots.
    for (network, expected) in [
        (
            json!({ "allow": ["*.example.com"] }),
            "*.example.com is not allowed here",
        ),
        (json!({ "allow": ["10.0.0.1"] }), "is not a domain name"),
        (json!({ "allow": [] }), "network.allow is empty"),
    ] {
        let response = server.post(
            "/v1/executions",
            json!({ "language": "bash", "command": "true", "network": network }).to_string(),
        );
        assert_eq!(response.status(), 422);
        let body: Value = response.json().unwrap();
        check("Error", &body);
        assert_eq!(body["code"], "network_not_allowed", "{body:#}");
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{body:#}"
        );
    }
    server.stop(Duration::from_secs(30));
}

#[test]
fn a_server_without_network_allow_gives_none() {
    let run = crate::common::run(
        &[
            "run",
            "--lang",
            "bash",
            "-c",
            "true",
            "--allow-net",
            "pkgs.test",
        ],
        b"",
    );
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    assert!(
        run.stderr().contains("gives no execution the network"),
        "{}",
        run.stderr()
    );
}

fn session(server: &Server, request: Value) -> String {
    create(server, request)["id"].as_str().unwrap().to_string()
}

#[test]
fn pip_and_npm_install_from_a_local_index_in_a_session() {
    let index = Index::start();
    publish_npm(index._root.path(), index.port);
    let server = server(64 << 20);
    let url = format!("http://pkgs.test:{}", index.port);
    let allow = json!({ "allow": ["pkgs.test"] });

    let python = session(&server, json!({ "language": "python", "network": allow }));
    let installed = exec(
        &server,
        &python,
        json!({
            "command": format!("pip install --user --disable-pip-version-check --index-url {url}/simple/ --trusted-host pkgs.test demo-pkg"),
            "limits": { "run": { "wall_time_ms": 300_000, "cpu_time_ms": 300_000, "processes": 256 } },
        }),
    );
    assert_eq!(installed["status"], "ok", "{installed:#}");
    assert!(
        connections(&installed)
            .iter()
            .all(|(h, allowed)| h == "pkgs.test" && *allowed),
        "{installed:#}"
    );
    let imported = exec(
        &server,
        &python,
        json!({ "files": [{ "name": "main.py", "content": "import demo_pkg\nprint(demo_pkg.GREETING)\n" }] }),
    );
    assert_eq!(
        stdout(&imported),
        "hello from demo-pkg, installed by pip\n",
        "{imported:#}"
    );
    // An execution in a session has the session's network, no other.
    let response = server.post(
        &format!("/v1/sessions/{python}/executions"),
        json!({ "command": "true", "network": { "allow": ["*.test"] } }).to_string(),
    );
    assert_eq!(response.status(), 422);
    // The rules outlive a pause.
    let paused = server.post(&format!("/v1/sessions/{python}/pause"), "");
    assert_eq!(paused.status(), 200, "{}", paused.text().unwrap());
    let fetched = exec(
        &server,
        &python,
        json!({ "command": format!("python3 -c \"import urllib.request as u; print(u.urlopen('{url}/hello.txt').read().decode(), end='')\"; python3 -c \"import urllib.request as u; u.urlopen('http://other.test/')\" 2>&1 | tail -1") }),
    );
    assert_eq!(
        stdout(&fetched),
        "hello through the proxy\nurllib.error.HTTPError: HTTP Error 403: Forbidden\n",
        "{fetched:#}"
    );
    assert_eq!(
        connections(&fetched),
        [
            ("pkgs.test".to_string(), true),
            ("other.test".to_string(), false)
        ]
    );

    let node = session(&server, json!({ "language": "node", "network": allow }));
    let installed = exec(
        &server,
        &node,
        json!({
            "command": format!("npm install --no-audit --no-fund --no-update-notifier --registry {url}/ demo-pkg"),
            "limits": { "run": { "wall_time_ms": 300_000, "cpu_time_ms": 300_000, "processes": 256 } },
        }),
    );
    assert_eq!(installed["status"], "ok", "{installed:#}");
    let required = exec(
        &server,
        &node,
        json!({ "files": [{ "name": "index.js", "content": "console.log(require('demo-pkg').greeting)\n" }] }),
    );
    assert_eq!(
        stdout(&required),
        "hello from demo-pkg, installed by npm\n",
        "{required:#}"
    );
    let asked = index.asked();
    for path in [
        "/simple/demo-pkg/",
        "/files/demo_pkg-1.0-py3-none-any.whl",
        "/demo-pkg",
        "/demo-pkg/-/demo-pkg-1.0.0.tgz",
    ] {
        assert!(asked.iter().any(|a| a == path), "{path} not in {asked:?}");
    }
    server.stop(Duration::from_secs(60));
}
