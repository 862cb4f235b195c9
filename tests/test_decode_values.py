"""decode: the values of a span — every AnyValue form, ids, ints and enums of the canonical OTLP JSON fixture.

The hand-written canonical fixture (tests/fixtures/decode/canonical.jsonl: hex ids, string ints, every AnyValue
form, the legacy envelope) decodes to the golden file, which pins the full decode; regenerate it with
``SPANPRISM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_decode_values.py`` and review the diff. A bad attribute value
quarantines its span alone; a 10 MB attribute decodes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.decode_inputs import decode_all
from support.spans import good_span, otlp_line

from spanprism.ingest.decode import open_input

HERE = Path(__file__).resolve().parent
CANONICAL = HERE / "fixtures" / "decode" / "canonical.jsonl"
GOLDEN = HERE / "golden" / "decode" / "canonical.json"


def test_canonical_fixture_matches_golden() -> None:
    _, result = decode_all(CANONICAL.read_bytes(), source="canonical.jsonl")
    assert not result.quarantined
    got = [jsonable({**s, "raw": orjson.loads(s["raw"]())}) for s in result.spans]
    if os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1":
        GOLDEN.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    assert got == orjson.loads(GOLDEN.read_bytes())


def jsonable(value: Any) -> Any:
    """bytes and non-finite floats made JSON-safe and explicit, so the golden file pins them too."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"$float": repr(value)}
    return value


def test_canonical_fixture_hand_checked_values() -> None:
    _, result = decode_all(CANONICAL.read_bytes())
    by_name = {s["name"]: s for s in result.spans}
    chat, legacy, snake = by_name["chat gpt-4o-mini"], by_name["legacy span"], by_name["snake span"]
    assert (chat["trace_id"], chat["parent_span_id"], chat["kind"]) == ("5b8efff798038103d269b633813fc60c", None, 3)
    assert chat["attributes"]["gen_ai.usage.raw"] == {
        "prompt_tokens": 1200,
        "details": {"cached_tokens": 1024},
        "missing": None,
    }
    assert chat["attributes"]["gen_ai.response.finish_reasons"] == ["stop", 2, []]
    assert chat["attributes"]["payload.bytes"] == b"hello"
    assert chat["attributes"]["empty.value"] is None and chat["attributes"]["gen_ai.request.top_p"] == 1.0
    assert by_name["POST /v1/chat/completions"]["parent_span_id"] == "eee19b7ec3c1b174"
    assert (legacy["scope"], legacy["kind"], legacy["status_code"]) == ("old.library", 2, 1)
    assert legacy["attributes"]["ratio.inf"] == float("inf") and legacy["attributes"]["count.negative"] == -42
    assert (snake["trace_id"], snake["span_id"], snake["parent_span_id"]) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "00f067aa0ba902b7",
    )
    assert (snake["kind"], snake["status_code"], snake["status_message"]) == (3, 2, "boom")
    assert snake["events"] == [{"name": "First Token Stream Event", "time_ns": 1700000000100000000, "attributes": {}}]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"intValue": "12.5"}, "intValue '12.5' is not an integer"),
        ({"doubleValue": "fast"}, "doubleValue 'fast' is not a number"),
        ({"stringValue": 5}, "stringValue 5 is not a str"),
        ({"boolValue": "yes"}, "boolValue 'yes' is not a bool"),
        ({"bytesValue": "!!"}, "bytesValue '!!' is not base64"),
        ({"arrayValue": [1]}, "arrayValue must be an object with a 'values' list"),
        ({"kvlistValue": {"values": [{"value": {}}]}}, "is not a {key, value} object with a string key"),
        ("plain", "attribute value 'plain' is not an AnyValue object"),
    ],
)
def test_bad_attribute_values_quarantine_their_span(value: Any, reason: str) -> None:
    attrs = [{"key": "ok", "value": {"stringValue": "x"}}, {"key": "bad", "value": value}]
    _, result = decode_all(otlp_line(good_span(1, attributes=attrs), good_span(2)))
    assert [s["span_id"] for s in result.spans] == ["0000000000000002"]
    [bad] = result.quarantined
    assert bad.location == "line 1 span 1" and bad.reason.startswith("attributes 'bad': ") and reason in bad.reason


def test_ten_megabyte_attribute_decodes(tmp_path: Path) -> None:
    big = "x" * 10_000_000
    path = tmp_path / "big.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                otlp_line(good_span(1)),
                otlp_line(good_span(2, attributes=[{"key": "gen_ai.input.messages", "value": {"stringValue": big}}])),
                otlp_line(good_span(3)),
            ]
        )
        + b"\n"
    )
    chunks, result = decode_all(open_input(path), chunk_bytes=1 << 20)
    assert len(chunks) == 3 and not result.quarantined
    assert [s["location"] for s in result.spans] == ["line 1 span 1", "line 2 span 1", "line 3 span 1"]
    assert result.spans[1]["attributes"]["gen_ai.input.messages"] == big
