"""Versioned schemas of stored state: which version a record was written at, and upgrades.

Pure logic, no I/O. Every record carries the schema version it was written at in one reserved
field, :data:`SCHEMA_FIELD` (absent = version 1, so records written before versioning existed,
and by code that never declares a version, are version 1 and cost nothing extra). A
:class:`SchemaLineage` is what a scope or resource declares: its current version and the
migrations that upgrade stored fields one version at a time. :meth:`SchemaLineage.upgrade`
runs the chain and validates the result against the current model; a record newer than the
code is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    DefinitionError,
    MigrationError,
    SchemaVersionError,
    StateValidationError,
    describe_errors,
)
from .schema import Schema, copy_json

__all__ = ["SCHEMA_FIELD", "SchemaLineage", "split_schema_version"]

SCHEMA_FIELD = "$schema_version"
"""The reserved field holding a record's schema version (not a valid Python identifier, so
no model can declare it; free-form writes of it are refused)."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def split_schema_version(stored: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
    """The user fields of a stored record and the schema version it was written at.

    Without the reserved field (every version-1 record) ``stored`` itself is returned, not
    a copy: this runs on every write.
    """
    if SCHEMA_FIELD not in stored:
        return stored, 1
    fields = dict(stored)
    raw = fields.pop(SCHEMA_FIELD, 1)
    version = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else 1
    return fields, version


@dataclass(frozen=True)
class SchemaLineage:
    """A record type's current schema version and the migrations from each older one.

    ``migrations[k]`` takes the stored fields at version ``k - 1`` (a dict it may modify) and
    returns them at version ``k``. It must be pure: it may run more than once for one record
    (each reader upgrades what it reads; the write-back is a compare-and-swap).
    """

    version: int = 1
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    @classmethod
    def of(cls, version: Any, migrations: Any, where: str) -> SchemaLineage:
        """Check a declaration (``DefinitionError`` naming ``where`` and the rule broken)."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DefinitionError(
                f"{where}: schema_version must be an integer >= 1, got {version!r}"
            )
        if migrations is None:
            migrations = {}
        if not isinstance(migrations, Mapping):
            raise DefinitionError(
                f"{where}: migrations must be a dict of version → function, got {migrations!r}"
            )
        for k, fn in migrations.items():
            if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= version:
                raise DefinitionError(
                    f"{where}: migrations[{k!r}] is outside 2..schema_version ({version}); "
                    "migrations[k] upgrades stored fields from version k-1 to k"
                )
            if not callable(fn):
                raise DefinitionError(f"{where}: migrations[{k}] must be a function, got {fn!r}")
        missing = [k for k in range(2, version + 1) if k not in migrations]
        if missing:
            raise DefinitionError(
                f"{where}: schema_version={version} needs a migration for every version from 2 "
                f"to {version}; missing: {', '.join(map(str, missing))} (migrations[k] upgrades "
                "stored fields from version k-1 to k)"
            )
        return cls(version, dict(migrations))

    @property
    def versioned(self) -> bool:
        return self.version > 1

    def check_not_newer(self, key: str, stored_version: int) -> None:
        if stored_version > self.version:
            raise self.not_newer_error(key, stored_version)

    def not_newer_error(self, key: str, stored_version: int) -> SchemaVersionError:
        return SchemaVersionError(
            f'record "{key}" was written at schema version {stored_version}, newer than '
            f"this code's version {self.version} (was the code rolled back?); it is left "
            "untouched: deploy code that knows version "
            f"{stored_version} or later",
            key=key,
            stored_version=stored_version,
            code_version=self.version,
        )

    def upgrade(
        self,
        key: str,
        fields: Mapping[str, Any],
        stored_version: int,
        schema: Schema,
        shared: bool = False,
    ) -> dict[str, Any]:
        """The stored ``fields`` (at ``stored_version``) brought to :attr:`version`, validated.

        ``shared``: the record is shared with other flows, whose fields (unknown to
        ``schema``) pass through unvalidated. Raises :class:`SchemaVersionError` for a newer
        record, :class:`MigrationError` when a migration fails or its result does not
        validate against ``schema``.
        """
        self.check_not_newer(key, stored_version)
        if stored_version == self.version:
            return dict(fields)
        current: dict[str, Any] = copy_json(dict(fields))
        for k in range(stored_version + 1, self.version + 1):
            try:
                result = self.migrations[k](current)
            except Exception as exc:
                raise MigrationError(
                    f'record "{key}": migration to version {k} (from {k - 1}) failed: '
                    f"{type(exc).__name__}: {exc}",
                    key=key,
                    from_version=stored_version,
                    to_version=self.version,
                ) from exc
            if not isinstance(result, Mapping):
                raise MigrationError(
                    f'record "{key}": migration to version {k} returned '
                    f"{type(result).__name__}, not a dict of fields",
                    key=key,
                    from_version=stored_version,
                    to_version=self.version,
                )
            current = dict(result)
        current.pop(SCHEMA_FIELD, None)
        others: dict[str, Any] = {}
        if shared and schema.model is not None:
            others = {k: v for k, v in current.items() if k not in schema.field_names}
            current = {k: v for k, v in current.items() if k in schema.field_names}
        try:
            validated = schema.validate_state(current)
        except StateValidationError as exc:
            raise MigrationError(
                f'record "{key}" does not validate after migration from version '
                f"{stored_version} to {self.version}: {describe_errors(exc.errors)}",
                key=key,
                from_version=stored_version,
                to_version=self.version,
                errors=exc.errors,
            ) from None
        # Keep what the migration wrote (not the defaults the validation filled in), in JSON
        # form: a default the migration left out stays a default, as for any record.
        return {**others, **{k: validated[k] for k in current}}
