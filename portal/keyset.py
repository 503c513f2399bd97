"""Keyset pagination, the part shared by the pages and the API: a page starts after
(or before) the row at a cursor, so the thousandth page costs what the first does and
nothing counts the rows before it.

A cursor is the ordering's values at one row (the last of a page, or the first),
as URL-safe base64 of a JSON list. It is a position, not a secret and not a
permission: a reader who forges one sees only rows the list would show them anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Field, Q


class InvalidCursor(ValueError):
    """A cursor this list did not make (edited, truncated, or another list's)."""


def cursor_encode(values: Sequence[Any]) -> str:
    plain = [
        value.isoformat() if hasattr(value, "isoformat") else value for value in values
    ]
    token = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def cursor_decode(
    cursor: str, fields: Sequence[Field], *, nullable: Collection[int] = ()
) -> list[Any]:
    """The values a cursor holds, each read by its field (a date, a number...); a
    value may be None only at the positions in `nullable`."""
    try:
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(token)
    except (binascii.Error, ValueError):
        raise InvalidCursor(cursor) from None
    if not isinstance(values, list) or len(values) != len(fields):
        raise InvalidCursor(cursor)
    try:
        parsed = [
            field.to_python(value) for field, value in zip(fields, values, strict=True)
        ]
    except ValidationError:
        raise InvalidCursor(cursor) from None
    if any(value is None and at not in nullable for at, value in enumerate(parsed)):
        raise InvalidCursor(cursor)
    return parsed


def keyset_beyond(
    paths: Sequence[str],
    values: Sequence[Any],
    *,
    descending: bool,
    nullable: Collection[str] = (),
    nulls_largest: bool = True,
) -> Q:
    """Rows strictly beyond `values` in the order of `paths` (all one direction, the
    last unique): (a, b) beyond (x, y) as a >= x AND (a > x OR b > y), "greater"
    meaning "later in the walk". The leading a >= x lets an index on a seek to the
    cursor rather than filter every row before it.

    A path in `nullable` may hold NULL, which the database orders as its largest
    value (`nulls_largest`, PostgreSQL) or its smallest (SQLite): the connection's
    `features.nulls_order_largest`, so that the walk's order is the database's own
    ORDER BY (and its index's) on either."""
    if len(paths) != len(values) or not paths:
        raise ValueError("one value per ordering path")
    strict, loose = ("lt", "lte") if descending else ("gt", "gte")
    # Where the NULLs of a nullable path come in the walk: a walk down (descending)
    # meets the largest values first.
    nulls_first = nulls_largest == descending

    def beyond(index: int) -> Q:
        path, value = paths[index], values[index]
        last = index == len(paths) - 1
        if path in nullable:
            return _beyond_nullable(
                path, value, strict, nulls_first, None if last else beyond(index + 1)
            )
        past = Q(**{f"{path}__{strict}": value})
        if last:
            return past
        return Q(**{f"{path}__{loose}": value}) & (past | beyond(index + 1))

    return beyond(0)


def _beyond_nullable(
    path: str, value: Any, strict: str, nulls_first: bool, then: Q | None
) -> Q:
    """Rows past `value` on a path that may hold NULL, or at it and past the rest
    (`then`, None for the last path); NULL equals NULL here, as in an ORDER BY."""
    if value is None:
        past = Q(**{f"{path}__isnull": False}) if nulls_first else None
        same = Q(**{f"{path}__isnull": True})
    else:
        past = Q(**{f"{path}__{strict}": value})
        if not nulls_first:
            past |= Q(**{f"{path}__isnull": True})
        same = Q(**{path: value})
    at_then = None if then is None else same & then
    if past is None:
        return at_then if at_then is not None else Q(pk__in=[])
    return past if at_then is None else past | at_then
