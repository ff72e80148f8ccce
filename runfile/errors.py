"""Errors in one line: HDF5's messages carry a multi-line stack with buffer addresses; the first line says
what failed, and it is what the user sees (the writer's failures, `emergence verify`'s damage)."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of `error`'s message, at most `limit` characters (its type if it has none)."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return line[:limit]


def describe(error: BaseException) -> str:
    """`Type: first line of the message`."""
    return f"{type(error).__name__}: {first_line(error)}"
