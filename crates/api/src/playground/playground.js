// The playground: a program, its input, and its output as it comes, over
// the server's own API (GET /v1/languages, the WebSocket
// /v1/executions/ws; with an API key, POST /v1/executions/stream, as a
// browser cannot give a WebSocket a key).
"use strict";

const $ = (id) => document.getElementById(id);

const SAMPLES = {
  python: 'name = input("Your name? ")\nprint(f"Hello, {name}!")\n',
  "python-data": 'import matplotlib.pyplot as plt\nplt.plot([n * n for n in range(10)])\nplt.savefig("squares.png")\nprint("drew squares.png")\n',
  node: 'const readline = require("readline");\nconst rl = readline.createInterface({ input: process.stdin });\nrl.question("Your name? ", (name) => { console.log(`Hello, ${name}!`); rl.close(); });\n',
  go: 'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n\tfmt.Print("Your name? ")\n\tname, _ := bufio.NewReader(os.Stdin).ReadString(\'\\n\')\n\tfmt.Printf("Hello, %s", name)\n}\n',
  rust: 'use std::io::stdin;\n\nfn main() {\n    println!("Your name?");\n    let mut name = String::new();\n    stdin().read_line(&mut name).unwrap();\n    println!("Hello, {}!", name.trim());\n}\n',
  bash: 'read -p "Your name? " name\necho "Hello, $name!"\n',
  c: '#include <stdio.h>\n\nint main(void) {\n    char name[100];\n    printf("Your name? ");\n    fflush(stdout);\n    if (scanf("%99s", name) == 1) printf("Hello, %s!\\n", name);\n    return 0;\n}\n',
  cpp: '#include <iostream>\n#include <string>\n\nint main() {\n    std::string name;\n    std::cout << "Your name? " << std::flush;\n    std::getline(std::cin, name);\n    std::cout << "Hello, " << name << "!\\n";\n}\n',
  java: 'import java.util.Scanner;\n\npublic class Main {\n    public static void main(String[] args) {\n        System.out.print("Your name? ");\n        System.out.flush();\n        String name = new Scanner(System.in).nextLine();\n        System.out.println("Hello, " + name + "!");\n    }\n}\n',
};

let socket = null; // the running execution's WebSocket
let abort = null; // or its streaming request's AbortController
let edited = false; // the code is the user's, not a sample

function key() {
  return localStorage.getItem("runner-api-key") || "";
}

function headers() {
  const k = key();
  return k ? { Authorization: `Bearer ${k}` } : {};
}

/** Fetches `path`; on 401 asks for the API key once and tries again. */
async function api(path, options = {}) {
  let response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    const given = prompt("This server needs an API key:");
    if (given) {
      localStorage.setItem("runner-api-key", given.trim());
      response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
    }
  }
  return response;
}

async function loadLanguages() {
  const response = await api("/v1/languages");
  const languages = await response.json();
  const select = $("language");
  for (const language of languages) {
    const option = document.createElement("option");
    option.value = language.language;
    option.textContent = language.version ? `${language.language} (${language.version})` : language.language;
    select.append(option);
  }
  const saved = localStorage.getItem("runner-language");
  if (saved && languages.some((l) => l.language === saved)) select.value = saved;
  else if (languages.some((l) => l.language === "python")) select.value = "python";
  sample();
}

function sample() {
  if (!edited) $("code").value = SAMPLES[$("language").value] || "";
  localStorage.setItem("runner-language", $("language").value);
}

function append(text, kind) {
  const span = document.createElement("span");
  span.className = kind;
  span.textContent = text;
  $("output").append(span);
  $("output").scrollTop = $("output").scrollHeight;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function running(on) {
  $("run").disabled = on;
  $("stop").disabled = !on;
  const live = on && socket !== null;
  for (const id of ["live", "send", "eof"]) $(id).disabled = !live;
  if (live) $("live").focus();
}

function request() {
  const wall = Number($("wall").value) || 10000;
  const args = $("args").value.trim();
  return {
    language: $("language").value,
    files: [{ content: $("code").value }],
    stdin: $("stdin").value,
    args: args ? args.split(/\s+/) : [],
    limits: { run: { wall_time_ms: wall, cpu_time_ms: wall } },
    outputs: ["*.png", "*.jpg", "*.jpeg", "*.gif", "*.svg"],
  };
}

function run() {
  $("output").textContent = "";
  $("files").textContent = "";
  $("timings").hidden = true;
  setStatus("Starting…", "running");
  if (key()) streamWithKey(request());
  else interactive(request());
}

function onEvent(event) {
  if (event.type === "started") {
    setStatus("Running…", "running");
  } else if (event.type === "output") {
    append(event.data, event.stage === "compile" ? "compile" : event.stream);
  } else if (event.type === "result") {
    showResult(event.result);
  } else if (event.type === "error") {
    setStatus(`${event.code}: ${event.message}`, "failed");
  }
}

function interactive(body) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/executions/ws`);
  socket = ws;
  ws.onopen = () => ws.send(JSON.stringify(body));
  ws.onmessage = (message) => onEvent(JSON.parse(message.data));
  ws.onerror = () => setStatus("The connection to the server failed.", "failed");
  ws.onclose = () => {
    // An earlier run's socket may close after this one started.
    if (socket !== ws) return;
    socket = null;
    running(false);
  };
  running(true);
}

async function streamWithKey(body) {
  abort = new AbortController();
  running(true);
  try {
    const response = await api("/v1/executions/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: abort.signal,
    });
    if (!response.ok) {
      const error = await response.json();
      setStatus(`${error.code}: ${error.message}`, "failed");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim()) onEvent(JSON.parse(line));
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") setStatus(`The request failed: ${error.message}`, "failed");
    else setStatus("Stopped.", "failed");
  } finally {
    abort = null;
    running(false);
  }
}

function showResult(result) {
  const ok = result.status === "ok" || result.status === "accepted";
  const stage = result.run || result.compile;
  let text = `Status: ${result.status}`;
  if (stage && stage.exit_code !== null && stage.exit_code !== undefined) text += ` (exit code ${stage.exit_code})`;
  if (result.message) text += ` — ${result.message}`;
  text += ` · ${result.version || result.language}`;
  setStatus(text, ok ? "ok" : "failed");
  timings(result);
  for (const file of result.outputs || []) {
    const figure = document.createElement("figure");
    if (file.content && file.media_type.startsWith("image/")) {
      const image = document.createElement("img");
      image.src = `data:${file.media_type};base64,${file.content}`;
      image.alt = file.path;
      figure.append(image);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = `${file.path} (${file.size} bytes${file.truncated ? ", too large to show" : ""})`;
    figure.append(caption);
    $("files").append(figure);
  }
}

/** The result's times as one bar: boot, ready, compile, run. */
function timings(result) {
  const m = result.metrics;
  const parts = [
    ["boot", m.vm_boot_time_ms],
    ["ready", m.ready_time_ms],
    ["compile", result.compile ? result.compile.wall_time_ms : 0],
    ["run", result.run ? result.run.wall_time_ms : 0],
  ].filter(([, ms]) => ms > 0);
  const total = parts.reduce((sum, [, ms]) => sum + ms, 0) || 1;
  const bar = $("timings");
  bar.textContent = "";
  for (const [name, ms] of parts) {
    const span = document.createElement("span");
    span.className = name;
    span.style.flexGrow = String(ms / total);
    span.textContent = `${name} ${Math.round(ms)} ms`;
    span.title = span.textContent;
    bar.append(span);
  }
  bar.title = `${m.start} start, ${Math.round(m.total_time_ms)} ms in all`;
  bar.hidden = false;
}

function stop() {
  if (socket) socket.send(JSON.stringify({ type: "signal", signal: "kill" }));
  if (abort) abort.abort();
}

$("input").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!socket) return;
  const line = `${$("live").value}\n`;
  socket.send(JSON.stringify({ type: "stdin", data: line }));
  append(line, "input");
  $("live").value = "";
});
$("eof").addEventListener("click", () => socket && socket.send(JSON.stringify({ type: "stdin_end" })));
$("run").addEventListener("click", run);
$("stop").addEventListener("click", stop);
$("language").addEventListener("change", sample);
$("code").addEventListener("input", () => (edited = $("code").value !== ""));
$("code").addEventListener("keydown", (event) => {
  if (event.key === "Tab" && !event.shiftKey) {
    event.preventDefault();
    const area = event.target;
    const at = area.selectionStart;
    area.setRangeText("    ", at, area.selectionEnd, "end");
    edited = true;
  } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    if (!$("run").disabled) run();
  }
});

loadLanguages().catch((error) => setStatus(`Cannot list the languages: ${error.message}`, "failed"));
