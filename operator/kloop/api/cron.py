"""A cron expression as a regular expression, shared by the CRD (CEL) and the operator.

Five fields (minute hour day-of-month month day-of-week) with numbers in range, ranges, steps,
lists and names, or one of the ``@hourly`` style macros. RE2 and Python ``re`` read it alike; it
has no backslash, so it sits in a CEL string literal unescaped.
"""

from __future__ import annotations

import re

_MINUTE = "[1-5]?[0-9]"
_HOUR = "2[0-3]|1?[0-9]"
_DAY_OF_MONTH = "3[01]|[12][0-9]|[1-9]"
_MONTH = "1[0-2]|[1-9]"
_DAY_OF_WEEK = "[0-7]"
_STEP = "[1-9][0-9]?"


def _field(values: str) -> str:
    atom = f"(?:{values})"
    item = rf"(?:[*]|{atom}(?:-{atom})?)(?:/{_STEP})?"
    return rf"{item}(?:,{item})*"


_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
_MACROS = "@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)"

CRON_REGEX = (
    rf"^(?:{_MACROS}|{_field(_MINUTE)} +{_field(_HOUR)} +{_field(_DAY_OF_MONTH)} +"
    rf"{_field(_MONTH + '|' + _MONTHS)} +{_field(_DAY_OF_WEEK + '|' + _DAYS)})$"
)

_COMPILED = re.compile(CRON_REGEX)


def is_valid_cron(expression: str) -> bool:
    """Whether ``expression`` is a cron schedule kloop (and the apiserver) accept."""
    return _COMPILED.match(expression.strip()) is not None and expression == expression.strip()
