"""Small parsers for values written inside the policy: durations, drill expectations, cron.

``parse_duration`` (``1h30m``) and ``parse_expect`` (``> 0``) are used at run time too
(SLA checks, drills), so they stand apart from validation; ``_cron_problem`` checks a
schedule. ``_Pattern``, the lazily compiled regular expression every policy module uses,
lives here because these parsers are its first users.
"""

from __future__ import annotations

import re
from typing import Any


class _Pattern:
    """A regular expression compiled on first use.

    wal-push imports this module once per segment; compiling every pattern at import
    time cost it milliseconds for checks it never runs on a validated, cached policy.
    """

    __slots__ = ("_args", "_rx")

    def __init__(self, pattern: str | bytes, flags: int = 0) -> None:
        self._args = (pattern, flags)
        self._rx: re.Pattern[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if self._rx is None:
            self._rx = re.compile(*self._args)
        return getattr(self._rx, name)


_DURATION_PART = _Pattern(r"([0-9]+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EXPECT = _Pattern(r"^\s*(==|!=|>=|<=|>|<|=)\s*(.*?)\s*$")
_NUMBER = _Pattern(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def parse_duration(text: str) -> int:
    """Seconds in ``text``: integers with units s, m, h, d, w (``30s``, ``5m``, ``1h30m``).

    Raises ValueError for anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string like 5m or 1h30m, not {text!r}")
    s = text.strip()
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(
            f"invalid duration {text!r}: use an integer and a unit s, m, h, d or w, e.g. 30s, 5m, 1h30m"
        )
    return total


def parse_expect(text: str) -> tuple[str, float | str]:
    """Split a drill ``expect`` into (operator, operand).

    ``"> 0"`` -> ``(">", 0.0)``; ``"== 3"`` -> ``("==", 3.0)``; a bare literal such as
    ``"ok"`` or ``"42"`` -> ``("==", "ok")`` / ``("==", "42")`` (compared as text; a bare
    number is also equal to a numeric result of the same value). ValueError when an
    operator is not followed by a number.
    """
    if not isinstance(text, str):
        raise ValueError(f"expect must be a string, not {text!r}")
    m = _EXPECT.match(text)
    if m is None:
        if not text.strip():
            raise ValueError("expect is empty: write e.g. '> 0', '== 3' or a literal value")
        return "==", text.strip()
    op, operand = m.group(1), m.group(2)
    if op == "=":
        op = "=="
    if not _NUMBER.match(operand):
        raise ValueError(
            f"invalid expect {text!r}: an operator (==, !=, >, >=, <, <=) must be followed by a number"
        )
    return op, float(operand)


def _cron_problem(expr: Any) -> str | None:
    if not isinstance(expr, str):
        return None  # the schema reports the type
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() in _CRON_MACROS:
            return None
        return f"unknown cron macro {text!r} (allowed: {', '.join(sorted(_CRON_MACROS))})"
    fields = text.split()
    if len(fields) != 5:
        return (
            f"invalid cron expression {expr!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    from croniter import croniter  # lazy: not needed by wal-push

    try:
        ok = croniter.is_valid(text)
    except Exception:  # pragma: no cover - croniter raising instead of returning False
        ok = False
    return None if ok else f"invalid cron expression {expr!r}"
