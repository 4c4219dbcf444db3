"""JSON that maeconv did not write (config files, indexes, headers, metadata), read one strict way:
whatever `json.loads` would let through or trip over unreported is a ValueError saying why."""
from __future__ import annotations

import json
from typing import Callable


MAX_DIGITS = 4000  # under Python's own limit on int() of a string


class DuplicateKey(ValueError):
    """A key appears twice in one object: which value a reader keeps would be a guess."""

    def __init__(self, key: str):
        super().__init__(f"key {key!r:.60} appears twice in one object")
        self.key = key


def strict_json(text: str | bytes, parse_int: Callable[[str], object] | None = None) -> object:
    """The value of `text`; ValueError for bytes that are not UTF-8, bad syntax, nesting too deep for
    the parser, an integer too long to convert, NaN or Infinity (not JSON), or a key twice."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_refuse_constant,
                          parse_int=_bounded(parse_int or int))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def _bounded(parse_int: Callable[[str], object]) -> Callable[[str], object]:
    """`parse_int`, after a length check: Python refuses to convert more digits than its limit (4300
    by default) with advice for programmers; a reader says what the file holds."""
    def parse(digits: str) -> object:
        if len(digits) > MAX_DIGITS:
            raise ValueError(f"an integer of {len(digits)} digits")
        return parse_int(digits)
    return parse


def _unique(pairs: list[tuple[str, object]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")
