"""The checks a job's schedule gets before anything is written: a five-field cron expression (or
one of the `@hourly`-style shorthands) and an IANA time zone.

Temporal parses the expression again when the Schedule is written, and a refusal there rolls the
job back too; checking here first gives a clear 422 that names the field and the problem,
rather than Temporal's message.
"""

from __future__ import annotations

import re
import zoneinfo

from controlplane.errors import Invalid

SHORTHANDS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, lowest, highest, names from the lowest value on)
FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),  # 0 and 7 are both Sunday
)
_STEP = re.compile(r"^(?P<range>[^/]+)(?:/(?P<step>\d+))?$")


def invalid(field: str, message: str) -> Invalid:
    return Invalid(
        message,
        details={"validation_errors": [{"field": field, "message": message, "type": "value"}]},
    )


def _value(token: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    upper = token.upper()
    if upper in names:
        return low + names.index(upper)
    if token.isdigit() and low <= int(token) <= high:
        return int(token)
    return None


def _field_error(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    for item in text.split(","):
        match = _STEP.match(item)
        if match is None or (match["step"] is not None and int(match["step"]) == 0):
            return f"'{item}' in the {name} field is not a value, range or step"
        part = match["range"]
        if part == "*":
            continue
        first, _, last = part.partition("-")
        start = _value(first, low, high, names)
        end = _value(last, low, high, names) if last else start
        if start is None or end is None:
            return f"'{item}' in the {name} field is out of range ({low}-{high})"
        if end < start:
            return f"'{item}' in the {name} field is a range that runs backwards"
    return None


def check_cron(expression: str) -> str:
    """The expression as stored (whitespace normalised), or a 422 saying what is wrong."""
    text = " ".join(expression.split())
    if text.lower() in SHORTHANDS:
        return text.lower()
    parts = text.split(" ")
    if len(parts) != len(FIELDS):
        raise invalid(
            "cron_schedule",
            f"A cron schedule has five fields (minute hour day-of-month month day-of-week) or "
            f"is one of {', '.join(SHORTHANDS)}; got {len(parts)} field(s)",
        )
    for part, (name, low, high, names) in zip(parts, FIELDS, strict=True):
        if (error := _field_error(part, name, low, high, names)) is not None:
            raise invalid("cron_schedule", error)
    return text


def check_timezone(name: str) -> str:
    """An IANA time zone name the system knows (what Temporal resolves it with, too)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise invalid("cron_timezone", f"Unknown time zone '{name}' (use an IANA name)") from None
    return name
