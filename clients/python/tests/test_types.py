"""The client's types against the server's openapi.json, the source of
truth: every schema a type follows exists, and its properties are the
type's fields, so the two cannot drift."""

import dataclasses
import json
import pathlib

from runner_codes.types import SCHEMAS, ExecutionResult, _build

OPENAPI = pathlib.Path(__file__).parents[3] / "crates" / "api" / "openapi.json"


def schemas():
    return json.loads(OPENAPI.read_text())["components"]["schemas"]


def fields(cls):
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}


def test_every_type_has_the_fields_of_its_schema():
    known = schemas()
    for name, cls in SCHEMAS.items():
        assert name in known, f"{name} is not a schema of openapi.json"
        schema = known[name]
        assert set(fields(cls)) == set(schema["properties"]), name
        required = set(schema.get("required", []))
        for field_name, field in fields(cls).items():
            has_default = field.default is not dataclasses.MISSING
            # What the server may leave out has a default; what it always
            # sends has none, so a missing one is an error, not a None.
            assert has_default == (field_name not in required), (name, field_name)


def test_a_result_is_built_with_its_nested_types_and_keeps_what_it_does_not_know():
    stage = {name: None for name in fields(SCHEMAS["StageResult"])}
    stage.update(status="ok", stdout="42\n", stderr="")
    metrics = {name: 1.0 for name in fields(SCHEMAS["ExecutionMetrics"])}
    result = _build(
        ExecutionResult,
        {
            "trace_id": "t",
            "language": "python",
            "version": "Python 3.13",
            "status": "ok",
            "message": None,
            "compile": None,
            "run": stage,
            "metrics": metrics,
            "backend": "qemu",
            "accel": "tcg",
            "something_new": 1,
        },
    )
    assert result.run.stdout == "42\n" and result.stdout == "42\n" and result.ok
    assert result.metrics.total_time_ms == 1.0
    assert result.extra == {"something_new": 1}
