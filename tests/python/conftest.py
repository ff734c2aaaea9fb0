"""Fixtures: the runner binary, and a `runner serve` with an API key,
started for the tests that need one and stopped after them."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest


def runner_binary() -> str:
    """The runner the tests were built with, else the one on PATH."""
    built = os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "runner")
    return os.environ.get("RUNNER_BIN") or (built if os.path.exists(built) else shutil.which("runner"))


class Served:
    def __init__(self, base: str, key: str):
        self.base = base
        self.key = key


@pytest.fixture(scope="session")
def server():
    """A `runner serve` on a free port of this machine, whose one API key
    is `Served.key`."""
    made = subprocess.run(
        [runner_binary(), "key", "new", "--name", "python-tests"], capture_output=True, text=True, check=True
    )
    key = next(l for l in made.stdout.splitlines() if l.startswith("rck_"))
    yield from serve(made.stdout[made.stdout.index("[[api_keys]]") :], key)


@pytest.fixture(scope="module")
def fuzzed_server():
    """A server with an API key for the API fuzzing, its limits kept small
    so that the few generated requests that are valid finish soon: Python
    and Bash only, two VMs at once, stages of at most 10 s, two sessions per
    key that end after 5 s idle."""
    made = subprocess.run(
        [runner_binary(), "key", "new", "--name", "fuzz"], capture_output=True, text=True, check=True
    )
    key = next(l for l in made.stdout.splitlines() if l.startswith("rck_"))
    settings = [
        # The quick languages only: a generated request for a compiled one
        # is refused (not enabled here) rather than compiled under TCG.
        "languages=python,bash",
        "max_vms=2",
        "prepare_snapshots=false",
        "limits.run.wall_time_ms=5000",
        "limits.run.cpu_time_ms=5000",
        "limits.compile.wall_time_ms=10000",
        "limits.compile.cpu_time_ms=10000",
        "limits.max.wall_time_ms=10000",
        "limits.max.cpu_time_ms=10000",
        "sessions.max_per_owner=2",
        "sessions.idle_timeout_s=5",
        "sessions.max_idle_timeout_s=5",
        "sessions.lifetime_s=30",
        "sessions.max_lifetime_s=30",
    ]
    extra = [arg for setting in settings for arg in ("--set", setting)]
    yield from serve(made.stdout[made.stdout.index("[[api_keys]]") :], key, extra)


@pytest.fixture(scope="session")
def open_server():
    """A `runner serve` on a free port of this machine without API keys
    (it then answers this machine only), as a playground runs."""
    yield from serve("", None)


def serve(config_text, key, extra=()):
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(config_text)
    config.close()
    process = subprocess.Popen(
        [runner_binary(), "serve", "--config", config.name, "--listen", "127.0.0.1:0", "--set", "pool.max_size=0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = None
        for line in process.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "listening":
                base = "http://" + event["addr"]
                break
        assert base, "runner serve said where it listens"
        # Keep reading its log, so that it never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
        deadline = time.monotonic() + 120
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        while httpx.get(base + "/readyz", headers=auth).status_code != 200:
            assert time.monotonic() < deadline, "runner serve became ready"
            time.sleep(0.2)
        yield Served(base, key)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        os.unlink(config.name)
