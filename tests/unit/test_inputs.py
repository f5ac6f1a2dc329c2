"""The door (runner/api/inputs.py): every caller field checked, INVALID_ARGUMENT naming the field and the spot."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.api import convert, inputs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.audit.records import canonical_json
from runner.errors import InvalidArgument
from runner.guard.validate import MAX_JSON_DEPTH, json_problem


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"a": 1e999}', "arguments_json: $.a: number is not finite"),
        ('{"a": [0, 1, 2, {"b": NaN}]}', "arguments_json: $.a[3].b: number is not finite"),
        ('{"a": Infinity}', "$.a: number is not finite"),
        ('{"a": {"b": -Infinity}}', "$.a.b: number is not finite"),
        ('{"a": -1e400}', "$.a: number is not finite"),
        ('{"s": "\\ud800"}', "$.s: string holds a lone surrogate"),
        ('{"s": ["ok", "x\\udfffy"]}', "$.s[1]: string holds a lone surrogate"),
        ('{"\\ud800": 1}', "$.\\ud800: key holds a lone surrogate"),
        ('{"a": {"\\udc00k": 1}}', "$.a.\\udc00k: key holds a lone surrogate"),
    ],
)
def test_arguments_the_audit_log_cannot_hold_are_refused_with_their_path(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        inputs.arguments(text)
    assert needle in info.value.message
    info.value.message.encode("utf-8")  # the message itself is sendable (no surrogate echoed back)


def test_valid_surrogate_pairs_and_big_integers_pass() -> None:
    value = inputs.arguments('{"emoji": "\\ud83d\\ude00", "n": 12345678901234567890, "f": 1.5e300}')
    assert value == {"emoji": "\U0001f600", "n": 12345678901234567890, "f": 1.5e300}


def test_nesting_up_to_the_cap_passes_and_deeper_is_refused() -> None:
    def nested(levels: int) -> str:  # the outer object is level 1
        return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"

    assert inputs.arguments(nested(MAX_JSON_DEPTH)) == json.loads(nested(MAX_JSON_DEPTH))
    with pytest.raises(InvalidArgument, match=f"nesting is deeper than {MAX_JSON_DEPTH} levels"):
        inputs.arguments(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' + "[" * 100_000, '{"a":' * 50_000])
def test_json_too_deep_for_the_decoder_is_a_clean_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument, match="nesting is deeper than"):
        inputs.arguments(text)


def test_arguments_size_cap() -> None:
    fits = json.dumps({"s": "x" * (inputs.MAX_ARGUMENTS_BYTES - 16)})
    assert inputs.arguments(fits)
    with pytest.raises(InvalidArgument, match="larger than the cap"):
        inputs.arguments(json.dumps({"s": "x" * inputs.MAX_ARGUMENTS_BYTES}))
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(InvalidArgument, match="larger than the cap"):
        inputs.arguments(json.dumps({"s": "é" * (inputs.MAX_ARGUMENTS_BYTES // 2)}, ensure_ascii=False))


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
))
@settings(max_examples=200, deadline=None)
def test_what_the_door_accepts_the_audit_log_can_hold(value: Any) -> None:
    """The door's rule is a subset of the canonical encoder's: anything accepted encodes (and hashes)."""
    text = json.dumps({"v": value}, ensure_ascii=True)  # surrogates travel as JSON escapes, like a caller's
    try:
        accepted = inputs.arguments(text)
    except InvalidArgument:
        assert json_problem(json.loads(text)) is not None  # the fast path refuses only what the rule refuses
        return
    assert json_problem(accepted) is None
    canonical_json(accepted).encode("utf-8")


def test_nesting_is_read_off_the_text_ignoring_brackets_in_strings() -> None:
    text = '{"a": "[[[{\\"[", "b": [[{"c": "]]]}"}]], "d": {}}'
    assert inputs._nesting(inputs._STRING.sub("", text)) == 4
    assert inputs.arguments(text)["a"] == '[[[{"['
    deep_in_a_string = json.dumps({"s": "[" * 1000})
    assert inputs.arguments(deep_in_a_string) == {"s": "[" * 1000}


def test_json_problem_is_iterative_and_names_non_json_values() -> None:
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    assert json_problem(deep) == f"$[0]{'[0]' * (MAX_JSON_DEPTH - 1)}: nesting is deeper than {MAX_JSON_DEPTH} levels"
    assert json_problem({"a": (1, 2)}) == "$.a: tuple is not a JSON value"
    assert json_problem({"a": {1: 2}}) == "$.a: key 1 is not a string"
    assert json_problem({"a": [1, "b", None, True, 2.5, {"c": []}]}) is None


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "session_id is required"),
        ("s" * (inputs.MAX_ID + 1), "more than the cap of 128"),
        ("ses\x00sion", "control character U+0000 at index 3"),
        ("ses\nsion", "control character U+000A"),
        ("ses\x9bsion", "control character U+009B"),
    ],
)
def test_identifiers(value: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        convert.require_session_id(value)


def test_text_fields() -> None:
    assert inputs.reason("line one\nline two\ttabbed") == "line one\nline two\ttabbed"
    with pytest.raises(InvalidArgument, match="reason holds control character U\\+001B"):
        inputs.reason("ok \x1b]52;c;SGVsbG8=\x07")
    with pytest.raises(InvalidArgument, match="reason is 5000 characters long"):
        inputs.reason("r" * 5000)
    # Format characters (zero-width and the like) are text: the guard decides what look-alike names mean.
    assert inputs.name("del\u200bete_file", "tool") == "del\u200bete_file"
    with pytest.raises(InvalidArgument, match="tool is required"):
        inputs.name("", "tool")
    with pytest.raises(InvalidArgument, match="uri holds control character"):
        inputs.uri("file:///x\r\nHost: evil")


def test_prompt_arguments_and_labels() -> None:
    assert inputs.prompt_arguments({"name": "Ann\nLee"}) == {"name": "Ann\nLee"}
    with pytest.raises(InvalidArgument, match="at most 64 prompt arguments"):
        inputs.prompt_arguments({str(i): "" for i in range(65)})
    with pytest.raises(InvalidArgument, match='arguments\\["k"\\] is 65537 characters long'):
        inputs.prompt_arguments({"k": "v" * 65537})
    with pytest.raises(InvalidArgument, match="arguments key holds control character"):
        inputs.prompt_arguments({"k\x00": "v"})
    with pytest.raises(InvalidArgument, match='labels\\["team"\\] holds control character'):
        inputs.labels({"team": "a\x07"})


def test_audit_query_fields() -> None:
    with pytest.raises(InvalidArgument, match="at most 64 kinds"):
        convert.audit_query_from_proto(pb.QueryAuditRequest(kinds=["request"] * 65))
    with pytest.raises(InvalidArgument, match="caller holds control character"):
        convert.audit_query_from_proto(pb.QueryAuditRequest(caller="a\x1bb"))
    with pytest.raises(InvalidArgument, match="record_id is 129 characters"):
        convert.audit_query_from_proto(pb.QueryAuditRequest(record_id="r" * 129))
    for since in (Timestamp(seconds=2**62), Timestamp(seconds=-(2**62)), Timestamp(seconds=0, nanos=-1)):
        with pytest.raises(InvalidArgument, match="since is not a valid timestamp"):
            convert.audit_query_from_proto(pb.QueryAuditRequest(since=since))
    query = convert.audit_query_from_proto(pb.QueryAuditRequest(until=Timestamp(seconds=253_402_300_799)))
    assert query.until == 253_402_300_799


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"n": 1' + "0" * 400 + "}", "$.n"),
        ('{"a": [1, {"n": -1' + "0" * 309 + "}]}", "$.a[1].n"),
    ],
)
def test_integers_beyond_a_json_numbers_range_are_refused(text: str, where: str) -> None:
    # Python holds them, a JavaScript server reads Infinity, and jsonschema's multipleOf: 0.5 raised OverflowError.
    with pytest.raises(InvalidArgument, match=rf"arguments_json: {re.escape(where)}: integer is beyond the range"):
        inputs.arguments(text)


def test_long_digits_that_are_a_float_or_fit_a_double_pass() -> None:
    assert inputs.arguments('{"f": 0.' + "0" * 400 + "1}") == {"f": 0.0}
    largest = str(int(sys.float_info.max))
    assert inputs.arguments('{"n": ' + largest + ', "m": -' + largest + "}")["n"] == int(sys.float_info.max)
    assert inputs.arguments('{"s": "' + "9" * 400 + '"}')["s"] == "9" * 400  # digits in a string are text
