"""The input limits, pinned in one place and checked in the pure layer. No I/O.

Every backend stores what passes these checks, and the same checks run before anything reaches
a store, so a value that one backend could not hold (a NUL that PostgreSQL refuses, an integer
SQLite cannot index, a nesting depth that overflows a JSON encoder) is refused the same way on
all of them, with a 4xx over HTTP and nothing written. See ``docs/security.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from pydantic import BaseModel

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_KEY_BYTES",
    "MAX_OUTPUT_DEPTH",
    "MIN_INT",
    "check_json",
    "check_key",
    "check_text",
    "json_problem",
    "text_problem",
]

MAX_KEY_BYTES: Final = 512
"""Collection keys and ids (session, user, project, request): at most this many UTF-8 bytes."""
MAX_DEPTH: Final = 64
"""JSON nesting: at most this many levels of lists/objects in a state value or an input."""
MAX_OUTPUT_DEPTH: Final = 128
"""An action's output may nest this deep: room for state values (64 levels) inside whatever
the block wraps them in, and well below what the JSON serialiser can write (254)."""
MAX_INT: Final = 2**63 - 1
"""Integers in state lie within ``MIN_INT..MAX_INT`` (signed 64-bit, what every backend and
JSON consumer holds exactly)."""
MIN_INT: Final = -MAX_INT
MAX_BODY_BYTES: Final = 1_000_000
"""The default ``max_body_bytes`` of the HTTP app (1 MB)."""

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")

Fail = Callable[[str, str], Exception]
"""Builds the error to raise from ``(rule message, error type)``."""


def text_problem(text: str, *, allow_nul: bool = False) -> tuple[str, str] | None:
    """Why ``text`` cannot be stored as a JSON string (``(message, type)``), or None."""
    if "\x00" in text and not allow_nul:
        return "strings must not contain NUL (\\u0000)", "string_nul"
    if _SURROGATE.search(text):
        return "strings must be valid Unicode (a lone surrogate was found)", "string_unicode"
    return None


def _loc(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(value)"


def json_problem(
    value: Any,
    loc: tuple[str | int, ...] = (),
    *,
    max_depth: int = MAX_DEPTH,
    state: bool = True,
) -> tuple[tuple[str | int, ...], str, str] | None:
    """The first violation in ``value`` as ``(loc, message, type)``, or None.

    Checks nesting depth (lists, dicts, tuples and pydantic models each add a level),
    integer range, finite floats, and strings (values and dict keys) without NUL or lone
    surrogates. Iterative, so hostile depth cannot overflow the Python stack. With
    ``state=False`` (an action's input or output, which is never stored as such) NUL is
    allowed and integers need only be printable (at most 4,300 digits, Python's limit).
    """
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, loc, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not state and _printable(item):
                continue
            if not MIN_INT <= item <= MAX_INT:
                return (
                    where,
                    (
                        f"integers must lie within ±(2**63 - 1); got one of {_digits(item)} digits"
                        if state
                        else f"integers must have at most 4300 digits; got {_digits(item)}"
                    ),
                    "int_range",
                )
            continue
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return where, f"Input should be a finite number, got {item!r}", "finite_number"
            continue
        if isinstance(item, str):
            problem = text_problem(item, allow_nul=not state)
            if problem is not None:
                return (where, *problem)
            continue
        children: list[tuple[Any, tuple[str | int, ...]]]
        if isinstance(item, dict):
            for k in item:
                key_text = k if isinstance(k, str) else ""
                if (problem := text_problem(key_text, allow_nul=not state)) is not None:
                    return (where, f"object keys: {problem[0]}", problem[1])
            children = [(v, (*where, k)) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [(v, (*where, i)) for i, v in enumerate(item)]
        elif isinstance(item, BaseModel):
            children = [(getattr(item, k, None), (*where, k)) for k in type(item).model_fields]
        else:
            continue
        if depth >= max_depth:
            return where, f"values must not nest deeper than {max_depth} levels", "json_depth"
        stack.extend((v, w, depth + 1) for v, w in reversed(children))
    return None


_PRINTABLE = 10**4300


def _printable(n: int) -> bool:
    return -_PRINTABLE < n < _PRINTABLE


def _digits(n: int) -> str:
    # str() of a huge int raises past 4,300 digits; the bit length gives the count cheaply.
    if abs(n) < 10**4000:
        return str(len(str(abs(n))))
    return f"about {int(abs(n).bit_length() * 0.30103)}"


def check_json(value: Any, loc: tuple[str | int, ...], fail: Fail) -> None:
    """Raise ``fail(message, type)`` (message naming the location) if ``value`` breaks a limit."""
    problem = json_problem(value, loc)
    if problem is not None:
        where, message, type_ = problem
        raise fail(f'field "{_loc(where)}": {message}', type_)


def check_text(text: str, what: str, fail: Fail) -> None:
    """Raise if ``text`` (content, a name) holds NUL or a lone surrogate."""
    problem = text_problem(text)
    if problem is not None:
        raise fail(f"{what}: {problem[0]}", problem[1])


def key_problem(key: str, *, allow_slash: bool = True) -> str | None:
    """Why ``key`` is not a valid collection key or id (a rule, for a message), or None."""
    if _SURROGATE.search(key):
        return "it must be valid Unicode (a lone surrogate was found)"
    if _CONTROL.search(key):
        return "control characters and NUL are not allowed"
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"it is {size} UTF-8 bytes long; the limit is {MAX_KEY_BYTES}"
    if not allow_slash and "/" in key:
        return '"/" is not allowed'
    return None


def check_key(key: str, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(rule)`` if a collection key breaks a limit."""
    problem = key_problem(key)
    if problem is not None:
        raise fail(problem)
