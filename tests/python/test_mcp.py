"""Runner Codes' MCP server as an agent's MCP client sees it: the official
MCP Python SDK over stdio (`runner mcp`) and over streamable HTTP
(`runner serve`'s `/mcp`, behind its API key), against the real server,
which boots real VMs."""

import asyncio

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from conftest import runner_binary

TOOLS = {
    "run_code",
    "languages",
    "session_create",
    "session_run",
    "session_write_file",
    "session_read_file",
    "session_list_files",
    "session_pause",
    "session_resume",
    "session_delete",
}


def over_stdio(test, args=()):
    """Runs `test(session)` against a `runner mcp` started for it."""

    async def main():
        params = StdioServerParameters(command=runner_binary(), args=["mcp", *args])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await test(session)

    asyncio.run(main())


def over_http(served, test, key=True):
    """Runs `test(session)` against `runner serve`'s `/mcp`."""

    async def main():
        headers = {"Authorization": f"Bearer {served.key}"} if key else {}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(600)) as client:
            async with streamable_http_client(served.base + "/mcp", http_client=client) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await test(session)

    asyncio.run(main())


@pytest.fixture(params=["stdio", "http", "stdio-to-server"])
def with_server(request):
    """Each test runs over both transports, and with `runner mcp` as a
    client of a `runner serve`."""
    if request.param == "stdio":
        return over_stdio
    served = request.getfixturevalue("server")
    if request.param == "http":
        return lambda test: over_http(served, test)
    return lambda test: over_stdio(test, ["--server", served.base, "--api-key", served.key])


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def test_the_tools_are_listed_with_their_arguments(with_server):
    async def test(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        run = tools["run_code"].inputSchema
        assert run["required"] == ["language"]
        assert {"code", "files", "stdin", "limits", "expected_output"} <= set(run["properties"])
        assert "10 s" in tools["run_code"].description

    with_server(test)


def test_run_code_reads_well_and_carries_the_whole_result(with_server):
    async def test(session):
        ok = await session.call_tool("run_code", {"language": "python", "code": "print(6 * 7)"})
        assert not ok.isError
        assert text(ok).startswith("status: ok (exit code 0)")
        assert "--- stdout ---\n42\n" in text(ok)
        assert ok.structuredContent["run"]["stdout"] == "42\n"

        # A program's failure is a normal result, with its status.
        slow = await session.call_tool(
            "run_code",
            {"language": "python", "code": "while True: pass", "limits": {"wall_time_ms": 1000, "cpu_time_ms": 1000}},
        )
        assert not slow.isError
        assert slow.structuredContent["status"] == "time_limit_exceeded", text(slow)
        judged = await session.call_tool(
            "run_code", {"language": "bash", "code": "echo 5", "expected_output": "4\n"}
        )
        assert judged.structuredContent["status"] == "wrong_answer", text(judged)

        # Output past what a model can use is cut, with how much.
        long = await session.call_tool("run_code", {"language": "python", "code": "print('x' * 100000)"})
        assert "more bytes cut]" in text(long)
        assert len(text(long)) < 20000
        assert len(long.structuredContent["run"]["stdout"]) == 100001

        # A request that cannot run is a tool error saying why.
        unknown = await session.call_tool("run_code", {"language": "cobol", "code": "x"})
        assert unknown.isError
        assert text(unknown).startswith("unknown_language:"), text(unknown)
        bad = await session.call_tool(
            "run_code", {"language": "python", "code": "1", "limits": {"wall_time_ms": 10**9}}
        )
        assert bad.isError and "invalid_request" in text(bad), text(bad)

        # Arguments missing or of the wrong type are an error result naming
        # them (input validation errors are tool errors, which a model can
        # correct, as MCP 2025-11-25 asks); the server goes on. An unknown
        # tool is a protocol error.
        for arguments, named in [({"code": "print(1)"}, "missing field `language`"), ({"language": 7}, "expected a string")]:
            refused = await session.call_tool("run_code", arguments)
            assert refused.isError and named in text(refused), text(refused)
        with pytest.raises(McpError):
            await session.call_tool("rm_rf", {})
        languages = await session.call_tool("languages", {})
        assert "python" in text(languages)
        assert any(l["language"] == "go" for l in languages.structuredContent["languages"])

    with_server(test)


def test_a_session_keeps_files_between_steps_and_through_a_pause(with_server):
    async def test(session):
        created = await session.call_tool("session_create", {"language": "bash"})
        assert not created.isError, text(created)
        sid = created.structuredContent["id"]
        assert text(created).startswith(f"session_id: {sid}")

        wrote = await session.call_tool(
            "session_write_file", {"session_id": sid, "path": "in/data.txt", "content": "21\n"}
        )
        assert not wrote.isError, text(wrote)
        ran = await session.call_tool(
            "session_run", {"session_id": sid, "command": "echo $(( $(cat in/data.txt) * 2 )) > out.txt"}
        )
        assert ran.structuredContent["status"] == "ok", text(ran)
        read = await session.call_tool("session_read_file", {"session_id": sid, "path": "out.txt"})
        assert text(read) == "42\n"
        listed = await session.call_tool("session_list_files", {"session_id": sid})
        names = [e["name"] for e in listed.structuredContent["entries"]]
        assert "out.txt" in names and "in" in names, names

        paused = await session.call_tool("session_pause", {"session_id": sid})
        assert paused.structuredContent["state"] == "paused", text(paused)
        # Any request resumes it, as it was.
        again = await session.call_tool("session_run", {"session_id": sid, "command": "cat out.txt"})
        assert again.structuredContent["run"]["stdout"] == "42\n", text(again)

        deleted = await session.call_tool("session_delete", {"session_id": sid})
        assert not deleted.isError
        gone = await session.call_tool("session_run", {"session_id": sid, "command": "true"})
        assert gone.isError and text(gone).startswith("session_not_found"), text(gone)

    with_server(test)


def test_http_needs_the_api_key(server):
    refused = httpx.post(server.base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert refused.status_code == 401


def test_a_session_made_over_http_is_the_servers(server):
    """A session the MCP tools create is the key owner's, seen by the HTTP API."""

    async def test(session):
        created = await session.call_tool("session_create", {"language": "bash"})
        sid = created.structuredContent["id"]
        listed = httpx.get(server.base + "/v1/sessions", headers={"Authorization": f"Bearer {server.key}"}).json()
        assert sid in [s["id"] for s in listed["sessions"]]
        await session.call_tool("session_delete", {"session_id": sid})

    over_http(server, test)
