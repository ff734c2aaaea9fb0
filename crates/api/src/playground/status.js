// The operator's page: GET /v1/status (capacity, sessions, pools, latest
// executions) and the server's own Prometheus metrics (GET /metrics),
// polled every two seconds; the charts keep the last five minutes.
"use strict";

const $ = (id) => document.getElementById(id);
const EVERY_MS = 2000;
const KEEP = 150; // points: five minutes
const history = []; // {at, executions, starts: {kind: n}, buckets: [[le, n]]}

function headers() {
  const key = localStorage.getItem("runner-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function get(path) {
  let response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    const given = prompt("This server needs an API key:");
    if (given) localStorage.setItem("runner-api-key", given.trim());
    response = await fetch(path, { headers: headers() });
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

/** The samples of a Prometheus text exposition: [name, labels, value]. */
function samples(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push([match[1], labels, Number(match[3])]);
  }
  return out;
}

function snapshot(text) {
  const point = { at: Date.now(), executions: 0, starts: {}, buckets: new Map() };
  for (const [name, labels, value] of samples(text)) {
    if (name === "runner_executions_total") point.executions += value;
    else if (name === "runner_vm_starts_total") point.starts[labels.start] = (point.starts[labels.start] || 0) + value;
    else if (name === "runner_code_execution_seconds_bucket") {
      point.buckets.set(labels.le, (point.buckets.get(labels.le) || 0) + value);
    }
  }
  return point;
}

/** The `q` quantile of the executions between two points, from the histogram's buckets. */
function quantile(before, after, q) {
  const bounds = [...after.buckets.keys()].sort((a, b) => Number(a) - Number(b));
  const counts = bounds.map((le) => after.buckets.get(le) - (before.buckets.get(le) || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const wanted = q * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= wanted) return bounds[i] === "+Inf" ? Number(bounds[i - 1] || 0) : Number(bounds[i]);
  }
  return null;
}

function line(svg, series, max, kind) {
  const points = series
    .map((v, i) => (v === null ? null : `${(i / (KEEP - 1)) * 600},${120 - (v / max) * 110}`))
    .filter(Boolean)
    .join(" ");
  const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  polyline.setAttribute("points", points);
  polyline.setAttribute("class", kind);
  svg.append(polyline);
}

function chart(svg, seriesList) {
  svg.textContent = "";
  const values = seriesList.flat().filter((v) => v !== null);
  const max = Math.max(0.001, ...values) * 1.1;
  seriesList.forEach((series, i) => line(svg, series, max, i === 0 ? "a" : "b"));
  $(`${svg.id}-top`).textContent = `(top of the chart: ${max.toFixed(max < 10 ? 2 : 0)})`;
}

function charts() {
  const pad = (series) => Array(Math.max(0, KEEP - series.length)).fill(null).concat(series);
  const rate = [];
  const p50 = [];
  const p95 = [];
  for (let i = 1; i < history.length; i++) {
    const [a, b] = [history[i - 1], history[i]];
    rate.push(((b.executions - a.executions) * 1000) / (b.at - a.at));
    p50.push(quantile(a, b, 0.5));
    p95.push(quantile(a, b, 0.95));
  }
  chart($("rate"), [pad(rate)]);
  chart($("latency"), [pad(p50), pad(p95)]);
  const first = history[0];
  const last = history[history.length - 1];
  const kinds = Object.keys(last.starts).sort();
  $("starts").className = "starts";
  $("starts").textContent = "";
  for (const kind of kinds) {
    const span = document.createElement("span");
    span.textContent = `${kind}: ${last.starts[kind] - (first.starts[kind] || 0)} in the last ${Math.round((last.at - first.at) / 60000) || "<1"} min (${last.starts[kind]} in all)`;
    $("starts").append(span);
  }
}

function meter(label, used, of, unit = "") {
  const row = document.createElement("div");
  row.textContent = `${label}: ${used}${unit} of ${of}${unit}`;
  const bar = document.createElement("div");
  bar.className = "meter";
  const fill = document.createElement("div");
  fill.style.width = `${Math.min(100, (100 * used) / Math.max(1, of))}%`;
  bar.append(fill);
  return [row, bar];
}

function show(status) {
  const c = status.capacity;
  $("capacity").textContent = "";
  $("capacity").append(
    ...meter("Executions and sessions admitted", c.admitted_vms, c.max_vms),
    ...meter("Their memory", c.admitted_memory_mib, c.vm_memory_budget_mib, " MiB"),
    ...meter("Waiting in the queue", c.queue_length, c.queue_size),
  );
  const note = document.createElement("div");
  note.textContent = `${c.vms_running} VMs running in all (warm pools included); ${c.cpus} CPUs; ${c.pool_memory_mib} MiB kept for pools.`;
  $("capacity").append(note);
  $("sessions").textContent = Object.entries(status.sessions)
    .map(([state, n]) => `${n} ${state}`)
    .join(" · ");
  const pools = $("pools").tBodies[0];
  pools.textContent = "";
  for (const pool of status.pools) {
    const row = pools.insertRow();
    for (const value of [pool.language, pool.size, pool.target]) row.insertCell().textContent = value;
  }
  const recent = $("recent").tBodies[0];
  recent.textContent = "";
  for (const run of status.recent.slice(0, 20)) {
    const row = recent.insertRow();
    const cells = [
      new Date(run.finished_unix_ms).toLocaleTimeString(),
      run.language,
      run.status,
      run.start,
      `${Math.round(run.total_time_ms)} ms`,
      run.trace_id.slice(0, 8),
    ];
    cells.forEach((value, i) => {
      const cell = row.insertCell();
      cell.textContent = value;
      if (i === 2) cell.className = value === "ok" || value === "accepted" ? "ok" : "bad";
    });
  }
}

async function refresh() {
  try {
    const [status, metrics] = await Promise.all([get("/v1/status"), get("/metrics")]);
    show(await status.json());
    history.push(snapshot(await metrics.text()));
    if (history.length > KEEP) history.shift();
    charts();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("updated").textContent = `cannot update: ${error.message}`;
  }
}

refresh();
setInterval(refresh, EVERY_MS);
