"""What the sync and async clients share: request bodies, answers, and
when to try again."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from .errors import RunnerError
from .types import ExecutionResult, _build

#: Answers worth trying again after a pause: no capacity now, or the
#: server is stopping or not ready.
RETRIED = (429, 503)

Files = Union[Mapping[str, Union[str, bytes]], Sequence[Tuple[str, Union[str, bytes]]]]


def file_list(code: Optional[str], files: Optional[Files]) -> List[Dict[str, str]]:
    """The request's `files`: `code` first (the entry point), then `files`
    (name to text or bytes; bytes go as base64)."""
    out: List[Dict[str, str]] = []
    if code is not None:
        out.append({"content": code})
    items: Iterable[Tuple[str, Union[str, bytes]]] = (
        files.items() if isinstance(files, Mapping) else (files or [])
    )
    for name, content in items:
        if isinstance(content, bytes):
            out.append({"name": name, "content": base64.b64encode(content).decode(), "encoding": "base64"})
        else:
            out.append({"name": name, "content": content})
    return out


def execution_body(
    language: Optional[str],
    code: Optional[str] = None,
    files: Optional[Files] = None,
    command: Optional[str] = None,
    stdin: Optional[str] = None,
    args: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    limits: Optional[Mapping[str, Any]] = None,
    expected_output: Optional[str] = None,
    compare: Optional[Mapping[str, Any]] = None,
    outputs: Optional[Sequence[str]] = None,
    network: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """An execution request. `limits` may be `{"run": {...}, "compile":
    {...}}` or just the run stage's (`{"wall_time_ms": 2000}`)."""
    body: Dict[str, Any] = {}
    if language is not None:
        body["language"] = language
    listed = file_list(code, files)
    if listed:
        body["files"] = listed
    for key, value in [
        ("command", command),
        ("stdin", stdin),
        ("args", list(args) if args is not None else None),
        ("env", dict(env) if env is not None else None),
        ("expected_output", expected_output),
        ("compare", dict(compare) if compare is not None else None),
        ("outputs", list(outputs) if outputs is not None else None),
    ]:
        if value is not None:
            body[key] = value
    if limits is not None:
        body["limits"] = dict(limits) if ("run" in limits or "compile" in limits) else {"run": dict(limits)}
    if network is not None:
        body["network"] = {"allow": list(network)}
    return body


def error_of(response: httpx.Response) -> RunnerError:
    """The server's error answer as an exception."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    retry = response.headers.get("retry-after")
    return RunnerError(
        body.get("code", f"http_{response.status_code}"),
        body.get("message", response.text[:500]),
        status=response.status_code,
        trace_id=body.get("trace_id") or response.headers.get("x-request-id"),
        retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


def pause_before(attempt: int, error: RunnerError, backoff: float) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's
    `Retry-After`, else exponential back-off, at most a minute."""
    if error.retry_after is not None:
        return min(error.retry_after, 60.0)
    return min(backoff * (2**attempt), 60.0)


def event_of(line: str) -> Dict[str, Any]:
    """One NDJSON event of a stream; a `result` event's result is typed."""
    event = json.loads(line)
    if event.get("type") == "result" and isinstance(event.get("result"), dict):
        event["result"] = _build(ExecutionResult, event["result"])
    return event


def default_key(api_key: Optional[str]) -> Optional[str]:
    return api_key if api_key is not None else os.environ.get("RUNNER_API_KEY")


def headers(api_key: Optional[str]) -> Dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
