"""JSON from outside, parsed with a bound on nesting.

Python's parser recurses once per level: a body of a million "[" raises RecursionError (not
ValueError), and a structure a few hundred levels deep parses but then overflows the stack
of whatever walks it next (redaction, validation, the audit summary). No payload Backstop
knows needs more than a handful of levels, so anything deeper than MAX_DEPTH is refused.
"""

from __future__ import annotations

import json

MAX_DEPTH = 64


class TooDeep(ValueError):
    """The JSON text nests arrays and objects deeper than allowed."""

    def __init__(self, limit: int):
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def loads(text: str | bytes, max_depth: int = MAX_DEPTH):
    """Parse JSON text whose arrays and objects nest at most max_depth levels.

    Raises TooDeep when it nests deeper, ValueError (json.JSONDecodeError) when it is not
    JSON.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(max_depth) from None
    if nesting_exceeds(value, max_depth):
        raise TooDeep(max_depth)
    return value


def nesting_exceeds(value, limit: int) -> bool:
    """Whether lists and dicts in value nest more than limit levels (walked without
    recursion, so any depth is safe to ask about)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
