"""The client's own logic, with httpx's mock transport standing in for the
network (the tests against a real server are in tests/python)."""

import asyncio

import httpx
import pytest

from runner_codes import AsyncClient, Client, RunnerError


def answers(*responses):
    """A transport answering with `responses` in turn, recording requests."""
    seen = []
    queue = list(responses)

    def handle(request):
        seen.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


def busy(status=429, retry_after="0"):
    return httpx.Response(
        status,
        headers={"Retry-After": retry_after},
        json={"code": "queue_full", "message": "every VM is busy", "trace_id": "abc"},
    )


def languages():
    return httpx.Response(200, json=[])


def test_429_and_503_are_tried_again_after_retry_after():
    transport, seen = answers(busy(429), busy(503), languages())
    assert Client("http://x", transport=transport).languages() == []
    assert len(seen) == 3


def test_past_max_retries_the_error_is_raised_with_the_servers_code():
    transport, seen = answers(busy(), busy(), busy())
    with pytest.raises(RunnerError) as raised:
        Client("http://x", transport=transport, max_retries=2).languages()
    error = raised.value
    assert (error.code, error.status, error.trace_id, error.retry_after) == ("queue_full", 429, "abc", 0.0)
    assert len(seen) == 3


def test_other_errors_are_not_retried_and_the_key_is_sent():
    transport, seen = answers(
        httpx.Response(422, json={"code": "unknown_language", "message": "no cobol", "trace_id": "t1"})
    )
    with pytest.raises(RunnerError) as raised:
        Client("http://x", api_key="rck_k", transport=transport).run("cobol", code="x")
    assert raised.value.code == "unknown_language" and len(seen) == 1
    assert seen[0].headers["authorization"] == "Bearer rck_k"


def test_without_retry_after_the_wait_backs_off():
    from runner_codes._request import pause_before

    error = RunnerError("queue_full", "busy")
    assert [pause_before(n, error, 0.5) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert pause_before(20, error, 0.5) == 60.0


def test_the_async_client_retries_too():
    async def main():
        transport, seen = answers(busy(503), languages())
        client = AsyncClient("http://x", transport=transport)
        assert await client.languages() == []
        await client.aclose()
        return len(seen)

    assert asyncio.run(main()) == 2
