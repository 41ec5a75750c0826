"""JSON from outside with bounded nesting: the limit exactly, and depths that would overflow."""

from __future__ import annotations

import json

import pytest

from backstop import bounded_json


def nested(levels: int) -> str:
    return '{"a": ' * (levels // 2) + "[" * (levels - levels // 2) + "]" * (
        levels - levels // 2) + "}" * (levels // 2)


def test_nesting_up_to_the_limit_parses():
    assert bounded_json.loads(nested(64)) == json.loads(nested(64))
    assert bounded_json.loads(b'{"job": "x", "payload": {"a": [1, {"b": null}]}}')["job"] == "x"
    assert bounded_json.loads("7") == 7


@pytest.mark.parametrize("levels", [65, 900, 200_000])
def test_deeper_nesting_is_refused_as_a_value_error(levels):
    with pytest.raises(bounded_json.TooDeep, match="deeper than 64 levels"):
        bounded_json.loads(nested(levels))
    with pytest.raises(ValueError):
        bounded_json.loads(nested(levels))


def test_text_that_is_not_json_is_a_value_error():
    with pytest.raises(ValueError):
        bounded_json.loads("{not json")
