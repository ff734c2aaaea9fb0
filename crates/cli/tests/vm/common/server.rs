//! A `runner serve` process for the black-box tests: started on a free
//! port, its responses checked against the OpenAPI document.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use super::{assert_clean, runner, vm_processes};

/// A `runner serve` process, stopped with SIGTERM (and checked to leave
/// nothing behind) by [`Server::stop`], killed on drop otherwise.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
    pub client: Client,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_key(args, None)
    }

    /// A server whose client sends `key` as its API key with every request
    /// (`args` may then give a configuration file with keys). A `--listen`
    /// in `args` replaces the loopback address on a free port.
    pub fn start_with_key(args: &[&str], key: Option<&str>) -> Server {
        let listen = if args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            );
        }
        let mut child = runner()
            .arg("serve")
            .args(listen)
            // No warm pools unless a test asks (later flags win): pooled
            // VMs would be VMs of the server's that tests do not expect.
            .args(["--set", "pool.max_size=0"])
            // The server's own admission only, unless a test asks: these
            // tests count a server's VMs, and the test running beside one
            // would hold machine slots it then waits for (the machine-wide
            // rule is tested in tests/load.rs).
            .args(["--set", "shared_capacity=false"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<Value>(&line) {
                        if event["message"] == "listening" {
                            let _ = addr_tx.send(event["addr"].as_str().unwrap().to_string());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line; log: {:?}", log.lock().unwrap()));
        let server = Server {
            child,
            base: format!("http://{addr}"),
            log,
            client: Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(900))
                .build()
                .unwrap(),
        };
        // Ready once the start-up checks are done (images are cached).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let response = server.get("/readyz");
            if response.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready: {}",
                response.text().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap()
    }

    pub fn post(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    }

    /// Runs `request` and returns the checked result.
    pub fn execute(&self, request: &Value) -> Value {
        let response = self.post("/v1/executions", request.to_string());
        let status = response.status();
        let trace = header(&response, "x-request-id");
        let body: Value = response.json().unwrap();
        assert_eq!(status, 200, "{body:#}");
        check("ExecutionResult", &body);
        assert_eq!(body["trace_id"], trace.as_str(), "header and body agree");
        body
    }

    pub fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status(), 200);
        response.text().unwrap()
    }

    /// The value of the sample `name` (with its labels, as printed), or 0
    /// when there is no such sample yet.
    pub fn metric(&self, sample: &str) -> f64 {
        metric(&self.metrics(), sample)
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then checks that the server exits 0 within `within` and left
    /// no VM and no run directory.
    pub fn stop(mut self, within: Duration) {
        let pid = self.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "server still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "server exited with {status}; log: {:?}",
            self.log.lock().unwrap()
        );
        assert_clean(pid);
    }
}

impl Server {
    /// Creates a session as `request` asks; its id.
    pub fn session(&self, request: &Value) -> String {
        let created: Value = self
            .post("/v1/sessions", request.to_string())
            .json()
            .unwrap();
        created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created:#}"))
            .to_string()
    }

    /// Runs the shell `command` in session `id`; the answer.
    pub fn session_command(&self, id: &str, command: &str) -> Value {
        self.post(
            &format!("/v1/sessions/{id}/executions"),
            json!({ "command": command }).to_string(),
        )
        .json()
        .unwrap()
    }

    /// The VM processes of the server's warm pools (their run directories
    /// are named `pool-...`), by pid.
    pub fn pool_vms(&self) -> Vec<String> {
        vm_processes(self.pid())
            .into_iter()
            .filter(|p| p.contains(&format!("/run/{}.pool-", self.pid())))
            .map(|p| p.split(':').next().unwrap().to_string())
            .collect()
    }

    /// Waits until `language`'s pool holds `size` VMs and the server has
    /// no others, and returns them.
    pub fn wait_for_pool(&self, language: &str, size: usize) -> Vec<String> {
        self.wait_for_pools(&[language], size)
    }

    /// Waits until each of `languages`' pools holds `size` VMs and the
    /// server has no others, and returns them.
    pub fn wait_for_pools(&self, languages: &[&str], size: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60) * languages.len() as u32;
        loop {
            let gauges: Vec<f64> = languages
                .iter()
                .map(|l| self.metric(&format!("runner_warm_pool_size{{language=\"{l}\"}}")))
                .collect();
            let vms = self.pool_vms();
            if gauges.iter().all(|g| *g == size as f64) && vms.len() == size * languages.len() {
                return vms;
            }
            assert!(
                Instant::now() < deadline,
                "the pools of {languages:?} never reached {size}: gauges {gauges:?}, VMs {vms:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

pub fn openapi() -> Value {
    let text = include_str!("../../../../api/openapi.json");
    serde_json::from_str(text).unwrap()
}

/// Checks `value` against the schema `name` of the OpenAPI document.
pub fn check(name: &str, value: &Value) {
    let mut root = openapi();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    let validator = jsonschema::draft202012::new(&root).expect("the schemas compile");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} does not match the OpenAPI document: {errors:#?}\n{value:#}"
    );
}
