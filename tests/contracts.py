"""The JSON Schemas of the contracts (stream/contracts/, docs/contracts.md), for the tests.

``assert_valid_alert(value)`` / ``assert_valid_dlq(value)`` / ``assert_valid_levels(value)`` check one
record's bytes (or a parsed object) against its schema and fail with every violation listed;
``assert_valid_record(topic, value)`` picks the schema by topic.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

NAMES = ("event", "batch", "input", "alert", "dlq", "levels")
VERSIONS = {"dlq": 2}  # every other contract is at v1


def schema(name: str) -> dict[str, Any]:
    """The packaged schema ``stream/contracts/<name>.v<N>.schema.json``."""
    version = VERSIONS.get(name, 1)
    text = resources.files("stream").joinpath("contracts", f"{name}.v{version}.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def registry() -> Registry:
    return Registry().with_resources(
        (schema(n)["$id"], Resource.from_contents(schema(n))) for n in NAMES)


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), registry=registry())


def _check(name: str, value: bytes | str | dict[str, Any]) -> dict[str, Any]:
    obj = value if isinstance(value, dict) else orjson.loads(value)
    errors = sorted(validator(name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, f"not a valid {name} record:\n" + "\n".join(
        f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors) + f"\n{obj!r}"[:2000]
    return obj  # type: ignore[return-value]


def assert_valid_alert(value: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Check an alert record (risk.alerts value) against alert.v1.schema.json; return it parsed."""
    return _check("alert", value)


def assert_valid_dlq(value: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Check a DLQ record (risk.dlq value) against dlq.v2.schema.json; return it parsed."""
    return _check("dlq", value)


def assert_valid_levels(value: bytes | str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Check a risk.levels value against levels.v1.schema.json; ``None`` (a tombstone) is valid."""
    return None if value is None else _check("levels", value)


def assert_valid_record(topic: str, value: bytes | None) -> dict[str, Any] | None:
    """Check the value of a record written to an output topic (any namespace) against its schema."""
    if topic.endswith("risk.dlq"):
        return assert_valid_dlq(value)  # type: ignore[arg-type]
    if topic.endswith("risk.levels"):
        return assert_valid_levels(value)
    assert topic.endswith("risk.alerts"), f"no schema for topic {topic}"
    return assert_valid_alert(value)  # type: ignore[arg-type]
