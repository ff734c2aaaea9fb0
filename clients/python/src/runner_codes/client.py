"""The clients: `Client` (blocking) and `AsyncClient` (asyncio), the same
methods, over `httpx`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Sequence

import httpx

from . import _request as rq
from .errors import RunnerError
from .types import ExecutionResult, FileEntry, Language, SessionInfo, SubmissionResult, _build

DEFAULT_URL = "http://127.0.0.1:8080"


def _quote(path: str) -> str:
    return httpx.URL("/" + path.lstrip("/")).raw_path.decode().lstrip("/")


class Client:
    """A client of one `runner serve` (`base_url`; its API key, else
    `RUNNER_API_KEY`). 429 and 503 answers are tried again up to
    `max_retries` times, after the server's `Retry-After`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        *,
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: Optional[httpx.BaseTransport] = None,
    ):
        self._http = httpx.Client(
            base_url=base_url,
            headers=rq.headers(rq.default_key(api_key)),
            timeout=timeout,
            transport=transport,
        )
        self.max_retries = max_retries
        self.backoff = backoff

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                raise RunnerError("unreachable", f"cannot reach the server: {e}") from e
            if response.is_success:
                return response
            error = rq.error_of(response)
            if response.status_code not in rq.RETRIED or attempt >= self.max_retries:
                raise error
            time.sleep(rq.pause_before(attempt, error, self.backoff))
            attempt += 1

    def run(self, language: str, code: Optional[str] = None, **request: Any) -> ExecutionResult:
        """Runs a program in a fresh VM: `code` (the entry point) and/or
        `files`, or a shell `command`; `stdin`, `args`, `env`, `limits`,
        `expected_output`, `compare`, `outputs`, `network` (names)."""
        body = rq.execution_body(language, code, **request)
        return _build(ExecutionResult, self._send("POST", "/v1/executions", json=body).json())

    def stream(self, language: str, code: Optional[str] = None, **request: Any) -> Iterator[Dict[str, Any]]:
        """As `run`, yielding the events as they come: `started`, `output`
        (`stage`, `stream`, `data`), then `result` (an `ExecutionResult`)."""
        body = rq.execution_body(language, code, **request)
        yield from self._stream("/v1/executions/stream", body)

    def _stream(self, path: str, body: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        with self._http.stream("POST", path, json=body) as response:
            if not response.is_success:
                response.read()
                raise rq.error_of(response)
            for line in response.iter_lines():
                if line.strip():
                    yield rq.event_of(line)

    def submit(
        self,
        language: str,
        tests: Sequence[Mapping[str, Any]],
        code: Optional[str] = None,
        files: Optional[rq.Files] = None,
        **request: Any,
    ) -> SubmissionResult:
        """Judges a program against `tests` (`name`, `stdin`, `args`,
        `expected_output`, `limits`): compiled once, each test in a fresh
        VM."""
        body = {"language": language, "files": rq.file_list(code, files), "tests": [dict(t) for t in tests], **request}
        return _build(SubmissionResult, self._send("POST", "/v1/submissions", json=body).json())

    def languages(self) -> List[Language]:
        return [_build(Language, l) for l in self._send("GET", "/v1/languages").json()]

    def create_session(self, language: str, **request: Any) -> "Session":
        """A session: one VM for many executions (`memory_mib`, `disk_mib`,
        `env`, `idle_timeout_s`, `max_lifetime_s`, `network` (names))."""
        if "network" in request and request["network"] is not None:
            request["network"] = {"allow": list(request["network"])}
        info = _build(SessionInfo, self._send("POST", "/v1/sessions", json={"language": language, **request}).json())
        return Session(self, info)

    def session(self, session_id: str) -> "Session":
        """An existing session."""
        return Session(self, _build(SessionInfo, self._send("GET", f"/v1/sessions/{session_id}").json()))

    def sessions(self) -> List[SessionInfo]:
        return [_build(SessionInfo, s) for s in self._send("GET", "/v1/sessions").json()["sessions"]]


class Session:
    """A session of a `Client`; `info` is what the server last said of it."""

    def __init__(self, client: Client, info: SessionInfo):
        self._client = client
        self.info = info
        self.id = info.id

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_: Any) -> None:
        self.delete()

    def run(self, code: Optional[str] = None, **request: Any) -> ExecutionResult:
        """Runs code, files or a `command` in the session (as `Client.run`)."""
        body = rq.execution_body(None, code, **request)
        return _build(
            ExecutionResult, self._client._send("POST", f"/v1/sessions/{self.id}/executions", json=body).json()
        )

    def stream(self, code: Optional[str] = None, **request: Any) -> Iterator[Dict[str, Any]]:
        body = rq.execution_body(None, code, **request)
        yield from self._client._stream(f"/v1/sessions/{self.id}/executions/stream", body)

    def write_file(self, path: str, content: "str | bytes") -> None:
        data = content.encode() if isinstance(content, str) else content
        self._client._send("PUT", f"/v1/sessions/{self.id}/files/{_quote(path)}", content=data)

    def read_file(self, path: str) -> bytes:
        return self._client._send("GET", f"/v1/sessions/{self.id}/files/{_quote(path)}").content

    def list_files(self, path: str = "") -> List[FileEntry]:
        listing = self._client._send("GET", f"/v1/sessions/{self.id}/files", params={"path": path}).json()
        return [_build(FileEntry, e) for e in listing["entries"]]

    def delete_file(self, path: str) -> None:
        self._client._send("DELETE", f"/v1/sessions/{self.id}/files/{_quote(path)}")

    def refresh(self) -> SessionInfo:
        self.info = _build(SessionInfo, self._client._send("GET", f"/v1/sessions/{self.id}").json())
        return self.info

    def pause(self) -> SessionInfo:
        self.info = _build(SessionInfo, self._client._send("POST", f"/v1/sessions/{self.id}/pause").json())
        return self.info

    def resume(self) -> SessionInfo:
        self.info = _build(SessionInfo, self._client._send("POST", f"/v1/sessions/{self.id}/resume").json())
        return self.info

    def delete(self) -> None:
        try:
            self._client._send("DELETE", f"/v1/sessions/{self.id}")
        except RunnerError as e:
            if e.code != "session_not_found":
                raise


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        *,
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ):
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=rq.headers(rq.default_key(api_key)),
            timeout=timeout,
            transport=transport,
        )
        self.max_retries = max_retries
        self.backoff = backoff

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                raise RunnerError("unreachable", f"cannot reach the server: {e}") from e
            if response.is_success:
                return response
            error = rq.error_of(response)
            if response.status_code not in rq.RETRIED or attempt >= self.max_retries:
                raise error
            await asyncio.sleep(rq.pause_before(attempt, error, self.backoff))
            attempt += 1

    async def run(self, language: str, code: Optional[str] = None, **request: Any) -> ExecutionResult:
        body = rq.execution_body(language, code, **request)
        return _build(ExecutionResult, (await self._send("POST", "/v1/executions", json=body)).json())

    async def stream(self, language: str, code: Optional[str] = None, **request: Any) -> AsyncIterator[Dict[str, Any]]:
        body = rq.execution_body(language, code, **request)
        async with self._http.stream("POST", "/v1/executions/stream", json=body) as response:
            if not response.is_success:
                await response.aread()
                raise rq.error_of(response)
            async for line in response.aiter_lines():
                if line.strip():
                    yield rq.event_of(line)

    async def submit(
        self,
        language: str,
        tests: Sequence[Mapping[str, Any]],
        code: Optional[str] = None,
        files: Optional[rq.Files] = None,
        **request: Any,
    ) -> SubmissionResult:
        body = {"language": language, "files": rq.file_list(code, files), "tests": [dict(t) for t in tests], **request}
        return _build(SubmissionResult, (await self._send("POST", "/v1/submissions", json=body)).json())

    async def languages(self) -> List[Language]:
        return [_build(Language, l) for l in (await self._send("GET", "/v1/languages")).json()]

    async def create_session(self, language: str, **request: Any) -> "AsyncSession":
        if "network" in request and request["network"] is not None:
            request["network"] = {"allow": list(request["network"])}
        response = await self._send("POST", "/v1/sessions", json={"language": language, **request})
        return AsyncSession(self, _build(SessionInfo, response.json()))


class AsyncSession:
    """`Session` for asyncio."""

    def __init__(self, client: AsyncClient, info: SessionInfo):
        self._client = client
        self.info = info
        self.id = info.id

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.delete()

    async def run(self, code: Optional[str] = None, **request: Any) -> ExecutionResult:
        body = rq.execution_body(None, code, **request)
        response = await self._client._send("POST", f"/v1/sessions/{self.id}/executions", json=body)
        return _build(ExecutionResult, response.json())

    async def write_file(self, path: str, content: "str | bytes") -> None:
        data = content.encode() if isinstance(content, str) else content
        await self._client._send("PUT", f"/v1/sessions/{self.id}/files/{_quote(path)}", content=data)

    async def read_file(self, path: str) -> bytes:
        return (await self._client._send("GET", f"/v1/sessions/{self.id}/files/{_quote(path)}")).content

    async def list_files(self, path: str = "") -> List[FileEntry]:
        response = await self._client._send("GET", f"/v1/sessions/{self.id}/files", params={"path": path})
        return [_build(FileEntry, e) for e in response.json()["entries"]]

    async def pause(self) -> SessionInfo:
        response = await self._client._send("POST", f"/v1/sessions/{self.id}/pause")
        self.info = _build(SessionInfo, response.json())
        return self.info

    async def resume(self) -> SessionInfo:
        response = await self._client._send("POST", f"/v1/sessions/{self.id}/resume")
        self.info = _build(SessionInfo, response.json())
        return self.info

    async def delete(self) -> None:
        try:
            await self._client._send("DELETE", f"/v1/sessions/{self.id}")
        except RunnerError as e:
            if e.code != "session_not_found":
                raise
