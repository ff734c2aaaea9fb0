"""The Python client (clients/python) against a real `runner serve`, which
boots real VMs."""

import asyncio

import pytest

from runner_codes import AsyncClient, Client, RunnerError


@pytest.fixture
def client(server):
    with Client(server.base, api_key=server.key) as client:
        yield client


def test_run_returns_a_typed_result(client):
    result = client.run("python", code="import sys; print(sys.argv[1], input())", args=["hi"], stdin="there\n")
    assert result.ok and result.status == "ok"
    assert result.stdout == "hi there\n"
    assert result.run.exit_code == 0 and result.run.wall_time_ms > 0
    assert result.metrics.total_time_ms >= result.metrics.execution_time_ms

    failed = client.run("c", code="int main(void) { return }")
    assert failed.status == "compile_error" and failed.compile.stderr
    slow = client.run("bash", code="sleep 5", limits={"wall_time_ms": 500})
    assert slow.status == "time_limit_exceeded" and slow.run.timed_out
    judged = client.run("bash", code="echo 4", expected_output="4\n")
    assert judged.status == "accepted"
    files = client.run(
        "python",
        files={"main.py": "import helper; helper.save()", "helper.py": "def save():\n    open('out.bin', 'wb').write(bytes(range(4)))\n"},
        outputs=["*.bin"],
    )
    assert files.ok and files.outputs[0].path == "out.bin" and files.outputs[0].data == bytes(range(4))


def test_errors_carry_the_servers_code_message_and_trace(client):
    with pytest.raises(RunnerError) as raised:
        client.run("cobol", code="DISPLAY 'HI'")
    error = raised.value
    assert error.code == "unknown_language" and error.status == 422
    assert "cobol" in error.message and error.trace_id
    with pytest.raises(RunnerError) as raised:
        client.run("python", code="1", limits={"wall_time_ms": 10**9})
    assert raised.value.code == "invalid_request"
    with pytest.raises(RunnerError) as raised:
        Client(client._http.base_url, api_key="rck_wrong").languages()
    assert raised.value.status == 401


def test_stream_yields_output_as_it_comes_then_the_result(client):
    events = list(client.stream("bash", code="echo one; sleep 0.2; echo two >&2"))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result"
    output = [(e["stream"], e["data"]) for e in events if e["type"] == "output"]
    assert ("stdout", "one\n") in output and ("stderr", "two\n") in output
    assert events[-1]["result"].status == "ok"


def test_a_submission_is_judged_test_by_test(client):
    judged = client.submit(
        "python",
        code="print(int(input()) * 2)",
        tests=[
            {"name": "a", "stdin": "2\n", "expected_output": "4\n"},
            {"name": "b", "stdin": "3\n", "expected_output": "7\n"},
        ],
    )
    assert [t.status for t in judged.tests] == ["accepted", "wrong_answer"]
    assert judged.status == "wrong_answer"


def test_a_session_keeps_files_and_pauses(client):
    with client.create_session("bash") as session:
        session.write_file("in/data.txt", "21\n")
        result = session.run(command="echo $(( $(cat in/data.txt) * 2 )) > out.txt")
        assert result.ok, result
        assert session.read_file("out.txt") == b"42\n"
        assert {"in", "out.txt"} <= {e.name for e in session.list_files()}
        assert session.pause().state == "paused"
        assert session.run(command="cat out.txt").stdout == "42\n"
        session.delete_file("out.txt")
        assert "out.txt" not in {e.name for e in session.list_files()}
        assert session.id in [s.id for s in client.sessions()]
    with pytest.raises(RunnerError) as raised:
        client.session(session.id)
    assert raised.value.code == "session_not_found"


def test_the_async_client_does_the_same(server):
    async def main():
        async with AsyncClient(server.base, api_key=server.key) as client:
            results = await asyncio.gather(
                client.run("bash", code="echo a"), client.run("bash", code="echo b")
            )
            assert [r.stdout for r in results] == ["a\n", "b\n"]
            events = [e async for e in client.stream("bash", code="echo streamed")]
            assert events[-1]["result"].stdout == "streamed\n"
            async with await client.create_session("bash") as session:
                await session.write_file("x", "1")
                assert (await session.run(command="cat x")).stdout == "1"
                assert [e.name for e in await session.list_files()] == ["x"]

    asyncio.run(main())
