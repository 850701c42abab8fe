"""Durations as people write them in config files and on the command line.

`25s`, `2m`, `1h`, `500ms`, a combination such as `1m30s`, or a plain number of seconds.
Values are kept as float seconds, the unit every sans-IO core takes for `now`.
"""

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """Return `value` in seconds; raise ValueError naming the accepted forms if it is not a positive duration."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 25s, 2m, 1h or 500ms, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float: as infinite as it gets
            seconds = float("inf")
    else:
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            terms = _TERM.findall(text)
            if not terms or "".join(number + unit for number, unit in terms) != text:
                raise ValueError(f"bad duration {value!r}: use a number and a unit (ms, s, m, h), as in 25s or 1m30s")
            seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in terms)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"bad duration {value!r}: must be positive and finite")
    return seconds


def format_duration(seconds: float) -> str:
    """Write `seconds` in the largest unit that keeps it whole, so `parse_duration` reads it back."""
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6 * max(1.0, seconds * 1000):
        return repr(float(seconds))
    for unit in ("h", "m", "s"):
        unit_millis = round(_UNIT_SECONDS[unit] * 1000)
        if millis and millis % unit_millis == 0:
            return f"{millis // unit_millis}{unit}"
    return f"{millis}ms"
