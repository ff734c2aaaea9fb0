#!/usr/bin/env python3
"""Cold boot vs snapshot restore vs warm pool, per language, on this machine.

An interim measurement until `runner bench` (issue 6) does this with
percentiles, host baselines and figures. Needs a built `runner`, its images
and snapshots (scripts/setup.sh), and root like the rest.

    scripts/measure-starts.py [--runner PATH] [--runs N]

Prints a Markdown table of medians and the memory of each kind of VM.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = {
    "python": "programs/python/hello.py",
    "node": "programs/node/hello.js",
    "bash": "programs/bash/hello.sh",
    "go": "programs/go/hello.go",
    "rust": "programs/rust/hello.rs",
}
LIMITS = {"run": {"wall_time_ms": 120000, "cpu_time_ms": 120000}}


def smaps(pid):
    """Rss, Pss and private dirty memory of a process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[-1] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) >> 10
    return fields["Rss"], fields["Pss"], fields.get("Private_Dirty", 0)


def qemu_pids(needle):
    for pid in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle.encode() in cmdline:
            yield pid, cmdline


def run_cli(runner, language, start):
    env = dict(os.environ)
    if start == "cold":
        env["RUNNER_SNAPSHOTS"] = "off"
    began = time.time()
    out = subprocess.run(
        [runner, "run", "--json", "--lang", language, "--timeout", "120",
         os.path.join(ROOT, HELLO[language])],
        capture_output=True, env=env, check=True)
    result = json.loads(out.stdout)
    assert result["status"] == "ok", result
    assert result["metrics"]["start"] == start, result["metrics"]
    return result["metrics"], time.time() - began


def vm_memory(runner, start):
    """Memory of the QEMU of a Python VM that sleeps, cold or restored."""
    env = dict(os.environ)
    if start == "cold":
        env["RUNNER_SNAPSHOTS"] = "off"
    child = subprocess.Popen(
        [runner, "run", "--lang", "python", "-c",
         "import time\nprint('up', flush=True)\ntime.sleep(5)"],
        stdout=subprocess.PIPE, env=env)
    child.stdout.readline()
    time.sleep(1)
    found = [smaps(pid) for pid, _ in qemu_pids(f"/run/{child.pid}.")]
    child.wait()
    return found[0] if found else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runner", default=os.path.join(ROOT, "target/release/runner"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for language in HELLO:
        for start in ("cold", "snapshot"):
            samples = [run_cli(args.runner, language, start) for _ in range(args.runs)]
            rows.append(summary(language, start, samples))
            print(rows[-1], flush=True)

    # The warm pool lives in the server: one VM per language, refilled.
    port = 18099
    server = subprocess.Popen(
        [args.runner, "serve", "--listen", f"127.0.0.1:{port}",
         "--set", "pool.min_size=1", "--set", "pool.max_size=1",
         "--queue-timeout-ms", "300000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for language in HELLO:
            wait_for_pool(base, language)
        pooled_memory = [smaps(pid) for pid, _ in qemu_pids(".pool-")]
        for language in HELLO:
            code = open(os.path.join(ROOT, HELLO[language])).read()
            body = json.dumps({"language": language, "files": [{"content": code}],
                               "limits": LIMITS}).encode()
            samples = []
            for _ in range(args.runs):
                wait_for_pool(base, language)
                time.sleep(1)  # let the refill of the last run settle
                began = time.time()
                request = urllib.request.Request(base + "/v1/executions", body)
                result = json.load(urllib.request.urlopen(request))
                assert result["status"] == "ok", result
                assert result["metrics"]["start"] == "pool", result["metrics"]
                samples.append((result["metrics"], time.time() - began))
            rows.append(summary(language, "pool", samples))
            print(rows[-1], flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()

    print()
    print("| language | start | boot-to-ready (ms) | execution (ms) | total (ms) | end to end (s) |")
    print("|---|---|---|---|---|---|")
    for language in HELLO:
        for row in rows:
            if row[0] == language:
                print(f"| {row[0]} | {row[1]} | {row[2]:,.0f} | {row[3]:,.0f} | {row[4]:,.0f} | {row[5]:.2f} |")
    print()
    print("QEMU memory, MiB (Rss, Pss, private dirty):")
    print("  python VM booted cold:   ", vm_memory(args.runner, "cold"))
    print("  python VM restored:      ", vm_memory(args.runner, "snapshot"))
    print("  paused pool VMs (each):  ", pooled_memory)


def summary(language, start, samples):
    median = lambda key: statistics.median(m[key] for m, _ in samples)
    ready = statistics.median(m["vm_boot_time"] + m["ready_time"] for m, _ in samples)
    return (language, start, ready, median("execution_time"), median("total_time"),
            statistics.median(wall for _, wall in samples))


def wait_for_pool(base, language):
    deadline = time.time() + 300
    gauge = f'runner_warm_pool_size{{language="{language}"}} '
    while time.time() < deadline:
        try:
            text = urllib.request.urlopen(base + "/metrics").read().decode()
            if any(line.startswith(gauge) and float(line.split()[-1]) >= 1
                   for line in text.splitlines()):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the {language} pool never filled")


if __name__ == "__main__":
    main()
