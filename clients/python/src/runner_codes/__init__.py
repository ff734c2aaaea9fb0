"""The Python client of Runner Codes: run untrusted code in microVMs
through a `runner serve`."""

from .client import AsyncClient, AsyncSession, Client, Session
from .errors import RunnerError
from .types import (
    ExecutionMetrics,
    ExecutionResult,
    FileEntry,
    Language,
    NetworkConnection,
    NetworkReport,
    OutputFile,
    SessionInfo,
    StageResult,
    SubmissionResult,
    TestResult,
)

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ExecutionMetrics",
    "ExecutionResult",
    "FileEntry",
    "Language",
    "NetworkConnection",
    "NetworkReport",
    "OutputFile",
    "RunnerError",
    "Session",
    "SessionInfo",
    "StageResult",
    "SubmissionResult",
    "TestResult",
]
