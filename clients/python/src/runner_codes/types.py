"""The server's answers, typed: one dataclass per schema of its
`openapi.json` (the test suite checks that they match). Fields a newer
server adds are kept in `extra`."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


def _build(cls, data: Optional[dict]):
    """`cls` from the JSON object `data`, nested types included."""
    if data is None:
        return None
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    values: Dict[str, Any] = {}
    for name in known:
        value = data.get(name)
        nested = getattr(cls, "_nested", {}).get(name)
        if nested is not None and value is not None:
            if isinstance(value, list):
                value = [_build(nested, v) for v in value]
            else:
                value = _build(nested, value)
        values[name] = value
    return cls(**values, extra={k: v for k, v in data.items() if k not in known})


@dataclass
class StageResult:
    """One stage (compile or run) of an execution."""

    status: str
    stdout: str
    stderr: str
    exit_code: Optional[int]
    signal: Optional[int]
    signal_name: Optional[str]
    timed_out: bool
    cpu_time_exceeded: bool
    memory_exceeded: bool
    output_truncated: bool
    file_size_exceeded: bool
    process_limit_hit: bool
    wall_time_ms: float
    cpu_time_ms: float
    wall_time: float
    cpu_time: float
    memory_peak_bytes: int
    prestarted: bool
    cached: bool
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ExecutionMetrics:
    """Where the time went."""

    trace_id: str
    language: str
    start: str
    vm_boot_time_ms: float
    ready_time_ms: float
    execution_time_ms: float
    total_time_ms: float
    vm_boot_time: float
    ready_time: float
    execution_time: float
    total_time: float
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class OutputFile:
    """A file an execution's `outputs` named."""

    path: str
    size: int
    media_type: str
    encoding: str
    content: Optional[str]
    truncated: bool
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> bytes:
        """The file's bytes (empty when it was too large to send)."""
        return base64.b64decode(self.content or "")


@dataclass
class NetworkConnection:
    """A connection a program made through the proxy."""

    host: str
    port: int
    allowed: bool
    bytes_sent: int
    bytes_received: int
    message: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class NetworkReport:
    connections: List[NetworkConnection]
    unlisted: int
    bytes: int
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested = {"connections": NetworkConnection}


@dataclass
class ExecutionResult:
    """What an execution did: its status, its stages, where the time went."""

    trace_id: str
    language: str
    version: str
    status: str
    message: Optional[str]
    compile: Optional[StageResult]
    run: Optional[StageResult]
    metrics: ExecutionMetrics
    backend: str
    accel: Optional[str]
    difference: Optional[Dict[str, Any]] = None
    outputs: Optional[List[OutputFile]] = None
    network: Optional[NetworkReport] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested = {
        "compile": StageResult,
        "run": StageResult,
        "metrics": ExecutionMetrics,
        "outputs": OutputFile,
        "network": NetworkReport,
    }

    @property
    def ok(self) -> bool:
        """The program ran and exited 0 (or was accepted)."""
        return self.status in ("ok", "accepted")

    @property
    def stdout(self) -> str:
        return self.run.stdout if self.run else ""

    @property
    def stderr(self) -> str:
        return self.run.stderr if self.run else ""


@dataclass
class TestResult:
    """One test of a submission."""

    __test__ = False  # not a pytest class

    name: str
    status: str
    run_status: Optional[str]
    message: Optional[str]
    exit_code: Optional[int]
    signal_name: Optional[str]
    wall_time_ms: Optional[float]
    cpu_time_ms: Optional[float]
    memory_peak_bytes: Optional[int]
    stdout: str
    stderr: str
    output_cut: bool
    start: Optional[str]
    trace_id: Optional[str]
    difference: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class SubmissionResult:
    """A judged submission: its verdict and each test's."""

    trace_id: str
    language: str
    version: str
    status: str
    message: Optional[str]
    compile: Optional[StageResult]
    tests: List[TestResult]
    summary: Dict[str, Any]
    total_time_ms: float
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested = {"compile": StageResult, "tests": TestResult}


@dataclass
class SessionInfo:
    """A session as the server describes it."""

    id: str
    language: str
    state: str
    start: str
    created_unix_ms: int
    last_used_unix_ms: int
    memory_mib: int
    vm_memory_mib: int
    disk_mib: int
    idle_timeout_s: int
    max_lifetime_s: int
    executions: int
    open_time_ms: float
    ended: Optional[Dict[str, Any]] = None
    paused: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class FileEntry:
    """An entry of a session's directory."""

    name: str
    kind: str
    size: int
    mode: int
    modified_s: int
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Language:
    language: str
    aliases: List[str]
    version: Optional[str]
    source_file: str
    compiled: bool
    memory_mib: int
    min_memory_mib: int
    ready: bool
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


#: The schema of the server's openapi.json each type follows.
SCHEMAS = {
    "ExecutionResult": ExecutionResult,
    "StageResult": StageResult,
    "ExecutionMetrics": ExecutionMetrics,
    "OutputFile": OutputFile,
    "NetworkReport": NetworkReport,
    "NetworkConnection": NetworkConnection,
    "SubmissionResult": SubmissionResult,
    "TestResult": TestResult,
    "Session": SessionInfo,
    "FileEntry": FileEntry,
    "Language": Language,
}
