"""json_diff follows JSON's equality and RFC 6901 paths, and stays bounded however large the values."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from runner.audit.diff import MAX_VALUE_BYTES, describe, json_diff, pointer_token


def test_identical_values_have_no_differences() -> None:
    value = {"content": [{"type": "text", "text": "hi"}], "isError": False, "n": None}
    assert json_diff(value, json.loads(json.dumps(value))) == []
    assert json_diff(None, None) == []
    assert json_diff([], ()) == []
    assert json_diff({"a": 1}, MappingProxyType({"a": 1})) == []


def test_nested_objects_and_arrays_key_by_key_and_index_by_index() -> None:
    old = {"z": 1, "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "same"}], "gone": [1]}
    new = {"z": 1, "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "same"}], "new": {"x": 2}}
    assert json_diff(old, new) == [
        {"op": "replace", "path": "/content/0/text", "old": "a", "new": "b"},
        {"op": "remove", "path": "/gone", "old": [1]},
        {"op": "add", "path": "/new", "new": {"x": 2}},
    ]


def test_extra_array_items_are_added_or_removed_at_their_index() -> None:
    assert json_diff([1, 2], [1, 2, 3, [4]]) == [
        {"op": "add", "path": "/2", "new": 3},
        {"op": "add", "path": "/3", "new": [4]},
    ]
    assert json_diff([1, 2, 3], [9]) == [
        {"op": "replace", "path": "/0", "old": 1, "new": 9},
        {"op": "remove", "path": "/1", "old": 2},
        {"op": "remove", "path": "/2", "old": 3},
    ]


def test_keys_are_escaped_as_json_pointer_tokens() -> None:
    assert pointer_token("a/b~c") == "a~1b~0c"
    assert pointer_token("~1") == "~01"
    diff = json_diff({"a/b": {"~": 1}, "": 0}, {"a/b": {"~": 2}, "": 1})
    assert [entry["path"] for entry in diff] == ["/", "/a~1b/~0"]


def test_a_change_of_type_is_one_replace_of_the_whole_value() -> None:
    assert json_diff({"a": [1, 2]}, {"a": {"0": 1}}) == [
        {"op": "replace", "path": "/a", "old": [1, 2], "new": {"0": 1}}
    ]
    assert json_diff("1", 1) == [{"op": "replace", "path": "", "old": "1", "new": 1}]
    assert json_diff(None, {}) == [{"op": "replace", "path": "", "old": None, "new": {}}]


def test_booleans_are_not_numbers_but_equal_ints_and_floats_are_the_same_number() -> None:
    assert json_diff(True, 1) == [{"op": "replace", "path": "", "old": True, "new": 1}]
    assert json_diff([0], [False]) == [{"op": "replace", "path": "/0", "old": 0, "new": False}]
    assert json_diff({"n": 1}, {"n": 1.0}) == []
    assert json_diff({"n": 1}, {"n": 1.5}) == [{"op": "replace", "path": "/n", "old": 1, "new": 1.5}]


def test_the_number_of_entries_is_capped() -> None:
    old = {f"k{i:04d}": i for i in range(1000)}
    new = {key: -value for key, value in old.items()}
    assert len(json_diff(old, new)) == 100
    capped = json_diff(old, new, max_entries=3)
    assert [entry["path"] for entry in capped] == ["/k0001", "/k0002", "/k0003"]  # k0000: 0 == -0
    assert len(json_diff(list(range(500)), [], max_entries=7)) == 7


def test_huge_values_are_replaced_by_their_size_so_a_diff_never_outgrows_them() -> None:
    huge = "x" * 10_000
    [entry] = json_diff({"text": huge}, {"text": "short"})
    assert entry == {"op": "replace", "path": "/text", "old": "<10002 bytes of JSON>", "new": "short"}
    added: dict[str, Any] = {"rows": [{"id": i, "name": "row " * 20} for i in range(200)]}
    [entry] = json_diff({}, added)
    assert entry["new"].startswith("<") and entry["new"].endswith(" bytes of JSON>")
    assert len(json.dumps(json_diff(huge, huge + "y"))) < 2 * MAX_VALUE_BYTES
    just_fits = "y" * (MAX_VALUE_BYTES - 2)
    assert json_diff(just_fits, 1)[0]["old"] == just_fits


def test_describe_reads_as_one_line_per_entry() -> None:
    assert describe({"op": "replace", "path": "/content/0/text", "old": "a", "new": "b"}) == (
        'replace /content/0/text: "a" → "b"'
    )
    assert describe({"op": "add", "path": "/x", "new": {"b": 1, "a": [True]}}) == 'add /x: {"a":[true],"b":1}'
    assert describe({"op": "remove", "path": "/y", "old": None}) == "remove /y: null"
    assert describe({"op": "replace", "path": "", "old": 1, "new": "é"}) == 'replace (root): 1 → "é"'
    line = describe({"op": "add", "path": "/long", "new": "z" * 500})
    assert line == "add /long: " + '"' + "z" * 78 + "…"
