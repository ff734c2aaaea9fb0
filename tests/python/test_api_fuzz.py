"""Schemathesis against the server's own OpenAPI document
(crates/api/openapi.json, served at /openapi.json): every operation with
generated requests, valid and not. For each response: no 5xx but a 503 (a
server at capacity says so), a status the document lists for the
operation, the content type and body schema and headers it documents;
requests the document rules out are refused; a request without the API key
is refused. Not checked: that every request the document allows is
accepted, because the document cannot say everything the server checks (a
language must exist, a limit must be within the server's maximum)."""

import time
from collections import defaultdict

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

schema = schemathesis.pytest.from_fixture("fuzzed_schema")


@pytest.fixture(scope="module")
def fuzzed_schema(fuzzed_server):
    return schemathesis.openapi.from_url(
        fuzzed_server.base + "/openapi.json", headers={"Authorization": f"Bearer {fuzzed_server.key}"}
    )


@schemathesis.check
def no_server_error_but_503(ctx, response, case):
    """A 5xx other than 503 is a failure of the server's own."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{response.status_code} from {case.method} {case.path}: {response.text[:500]}")


CHECKS = [
    no_server_error_but_503,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
]


# Seconds each operation took, printed at the end (-s): which ones boot VMs.
TOOK = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def report_time(fuzzed_server):
    yield
    for label, seconds in sorted(TOOK.items(), key=lambda item: -item[1]):
        print(f"{seconds:7.1f} s  {label}")
    # How many generated requests ran for real, in VMs.
    metrics = httpx.get(
        fuzzed_server.base + "/metrics", headers={"Authorization": f"Bearer {fuzzed_server.key}"}
    ).text
    print("\n".join(l for l in metrics.splitlines() if l.startswith("runner_executions_total{")))


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_answers_as_documented(case, fuzzed_server):
    started = time.monotonic()
    try:
        call(case, fuzzed_server)
    finally:
        TOOK[f"{case.method} {case.path}"] += time.monotonic() - started


def call(case, fuzzed_server):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzzed_server.key}"},
        checks=CHECKS,
        timeout=300,
    )
