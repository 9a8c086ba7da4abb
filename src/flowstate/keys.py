"""Collection key patterns: parsing, key normalisation and matching. Pure logic.

A pattern is ``/``-separated segments: literals, ``*`` (one segment), ``**`` (one or more
segments, last only) and ``[name]`` (a named parameter, one segment). Every key is normalised
and checked here before it reaches storage, so no key can address anything outside its
collection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import DefinitionError, KeyPatternError
from .limits import CONTROL, MAX_KEY_BYTES, key_problem

__all__ = ["KeyPattern", "normalize_key"]

_PARAM = re.compile(r"^\[([A-Za-z_][A-Za-z0-9_]*)\]$")


def _show(key: object) -> str:
    """A key for a message: repr, shortened (a hostile key can be megabytes long)."""
    text = repr(key)
    return text if len(text) <= 120 else f"{text[:100]}…({len(text)} characters)"


def _clip(text: str) -> str:
    return text if len(text) <= 120 else f"{text[:100]}…({len(text)} characters)"


def normalize_key(key: str) -> str:
    """``\\`` → ``/``, duplicate slashes collapsed, leading/trailing slashes dropped."""
    return "/".join(part for part in key.replace("\\", "/").split("/") if part)


@dataclass(frozen=True)
class KeyPattern:
    """A parsed collection pattern such as ``files/**`` or ``[topic]/notes``."""

    pattern: str
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, pattern: str) -> KeyPattern:
        if not isinstance(pattern, str) or not pattern.strip("/ "):
            raise DefinitionError(f"collection pattern must be a non-empty string, got {pattern!r}")
        segments = tuple(normalize_key(pattern).split("/"))
        names: set[str] = set()
        for i, seg in enumerate(segments):
            if "**" in seg and (seg != "**" or i != len(segments) - 1):
                raise DefinitionError(
                    f'collection pattern "{pattern}": "**" must be the whole last segment'
                )
            if seg.startswith("[") or seg.endswith("]"):
                match = _PARAM.match(seg)
                if match is None:
                    raise DefinitionError(
                        f'collection pattern "{pattern}": parameter segment "{seg}" must look '
                        "like [name]"
                    )
                if match.group(1) in names:
                    raise DefinitionError(
                        f'collection pattern "{pattern}": parameter "{match.group(1)}" repeats'
                    )
                names.add(match.group(1))
            elif seg in (".", "..") or CONTROL.search(seg):
                raise DefinitionError(f'collection pattern "{pattern}": invalid segment "{seg}"')
        return cls(pattern, segments)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(m.group(1) for s in self.segments if (m := _PARAM.match(s)))

    @property
    def prefix(self) -> str:
        """The literal segments before the first wildcard or parameter, with a trailing ``/``."""
        literal: list[str] = []
        for seg in self.segments:
            if seg in ("*", "**") or _PARAM.match(seg):
                break
            literal.append(seg)
        return "".join(s + "/" for s in literal)

    def _fail(self, key: object, rule: str) -> KeyPatternError:
        exc = KeyPatternError(f'key {_show(key)} is invalid for pattern "{self.pattern}": {rule}')
        # Clients are told the rule, not the key (it may belong to a collection they cannot see).
        exc.public_message = f'a key is invalid for pattern "{self.pattern}": {rule}'
        return exc

    def _check_limits(self, original: object, storage_key: str) -> str:
        problem = key_problem(storage_key)
        if problem is not None:
            raise self._fail(original, problem)
        return storage_key

    def _check_segments(self, original: object, parts: list[str]) -> None:
        for part in parts:
            if part in (".", ".."):
                raise self._fail(original, f'"{part}" segments are not allowed')
            if CONTROL.search(part):
                raise self._fail(original, "control characters and NUL are not allowed")

    def matches(self, key: str) -> bool:
        """Whether a normalised storage key fits the pattern."""
        parts = key.split("/")
        for i, seg in enumerate(self.segments):
            if seg == "**":
                return len(parts) > i
            if i >= len(parts):
                return False
            if seg != "*" and not _PARAM.match(seg) and parts[i] != seg:
                return False
        return len(parts) == len(self.segments)

    def resolve(self, key: str | Mapping[str, object]) -> str:
        """Turn a user key into the storage key, or raise :class:`KeyPatternError`.

        A string is relative to :attr:`prefix` (``"src/a.py"`` → ``"files/src/a.py"``); a
        storage key that already carries the prefix is accepted as is. A mapping fills the
        ``[name]`` parameters.
        """
        if isinstance(key, Mapping):
            return self._resolve_params(key)
        if not isinstance(key, str):
            raise self._fail(key, "a key is a string or, for [name] patterns, a dict")
        if CONTROL.search(key):
            raise self._fail(key, "control characters and NUL are not allowed")
        if len(key) > MAX_KEY_BYTES:  # before any work on it; the exact check is below
            raise self._fail(key, f"it is longer than the limit of {MAX_KEY_BYTES} UTF-8 bytes")
        norm = normalize_key(key)
        if not norm:
            raise self._fail(key, "the key is empty")
        self._check_segments(key, norm.split("/"))
        prefix = self.prefix
        if prefix and norm.startswith(prefix) and self.matches(norm):
            return self._check_limits(key, norm)
        full = prefix + norm
        if not self.matches(full):
            raise self._fail(key, f'"{_clip(full)}" does not match the pattern')
        return self._check_limits(key, full)

    def _resolve_params(self, values: Mapping[str, object]) -> str:
        wanted = self.params
        if not wanted:
            raise self._fail(dict(values), "this pattern has no [name] parameters; pass a string")
        unknown = sorted(set(values) - set(wanted))
        if unknown:
            raise self._fail(dict(values), f'unknown parameter "{unknown[0]}"')
        out: list[str] = []
        for seg in self.segments:
            match = _PARAM.match(seg)
            if match is None:
                if seg in ("*", "**"):
                    raise self._fail(dict(values), "wildcard segments need a string key")
                out.append(seg)
                continue
            name = match.group(1)
            if name not in values:
                raise self._fail(dict(values), f'missing parameter "{name}"')
            value = values[name]
            if not isinstance(value, str) or not value:
                raise self._fail(dict(values), f'parameter "{name}" must be a non-empty string')
            if "/" in value or "\\" in value:
                raise self._fail(dict(values), f'parameter "{name}" must be one segment (no "/")')
            self._check_segments(dict(values), [value])
            out.append(value)
        return self._check_limits(dict(values), "/".join(out))
