"""The input limits, pinned in one place and checked in the pure layer. No I/O.

Every backend stores what passes these checks, and the same checks run before anything reaches
a store, so a value that one backend could not hold (a NUL that PostgreSQL refuses, an integer
SQLite cannot index, a nesting depth that overflows a JSON encoder) is refused the same way on
all of them, with a 4xx over HTTP and nothing written. See ``docs/security.md``.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from pydantic import BaseModel

__all__ = [
    "CONTROL",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_KEY_BYTES",
    "MAX_OUTPUT_DEPTH",
    "MAX_RECORD_BYTES",
    "MIN_INT",
    "KeyRule",
    "broken_key_rule",
    "json_problem",
    "key_problem",
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
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
"""The default ``max_record_bytes`` of a store (16 MiB): the most one stored record (a scope's
state, a resource, a collection instance) may take — the UTF-8 bytes of each field's name and
compact JSON value, plus its content. A write that would make a record larger fails with
``StateValidationError`` (``record_size``) and writes nothing; pushes count too."""

CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters (U+0000 to U+001F and U+007F, NUL included): in no key, id or path."""
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def text_problem(text: str, *, allow_nul: bool = False) -> tuple[str, str] | None:
    """Why ``text`` cannot be stored as a JSON string (``(message, type)``), or None."""
    if "\x00" in text and not allow_nul:
        return "strings must not contain NUL (\\u0000)", "string_nul"
    if not text.isascii() and _SURROGATE.search(text):  # isascii: a flag, no scan
        return "strings must be valid Unicode (a lone surrogate was found)", "string_unicode"
    return None


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


KeyRule = Literal["unicode", "control", "length"]
"""The part of the key rule a text breaks (see :func:`broken_key_rule`)."""


def broken_key_rule(text: str, *, max_bytes: int = MAX_KEY_BYTES) -> KeyRule | None:
    """The rule every collection key, id and script path obeys, written once; None if kept.

    Valid Unicode (no lone surrogate), no :data:`CONTROL` characters, at most ``max_bytes``
    UTF-8 bytes. What else a kind of text must be (one segment, no ``..``) and how the error
    is worded is up to its checker: :func:`key_problem` here, ``flowstate.layout.check_text``
    for ids and paths.
    """
    if not text.isascii() and _SURROGATE.search(text):
        return "unicode"
    if CONTROL.search(text):
        return "control"
    if len(text.encode("utf-8")) > max_bytes:
        return "length"
    return None


def key_problem(key: str, *, allow_slash: bool = True) -> str | None:
    """Why ``key`` is not a valid collection key (a rule, for a message), or None."""
    broken = broken_key_rule(key)
    if broken == "unicode":
        return "it must be valid Unicode (a lone surrogate was found)"
    if broken == "control":
        return "control characters and NUL are not allowed"
    if broken == "length":
        size = len(key.encode("utf-8"))
        return f"it is {size} UTF-8 bytes long; the limit is {MAX_KEY_BYTES}"
    if not allow_slash and "/" in key:
        return '"/" is not allowed'
    return None
