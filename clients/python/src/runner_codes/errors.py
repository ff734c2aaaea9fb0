"""What the client raises."""

from __future__ import annotations

from typing import Optional


class RunnerError(Exception):
    """An error the server answered with (its `code`, `message` and
    `trace_id`, and the HTTP `status`), or `unreachable` when there was no
    answer."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: Optional[int] = None,
        trace_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ):
        super().__init__(f"{code}: {message}" + (f" (trace {trace_id})" if trace_id else ""))
        self.code = code
        self.message = message
        self.status = status
        self.trace_id = trace_id
        self.retry_after = retry_after
