"""Checks shared by the parameter dataclasses: every failure names the field, the value and the range."""

import math


def fail(owner, field, value, allowed):
    """Raise the house ValueError: ``Owner.field = value: must be allowed``."""
    raise ValueError(f"{type(owner).__name__}.{field} = {value!r}: must be {allowed}")


def finite(owner, field, value):
    """Return ``value`` as a float, raising unless it is a finite real number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        fail(owner, field, value, "a finite number")
    if not math.isfinite(x):
        fail(owner, field, value, "a finite number")
    return x


def in_range(owner, field, value, lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False):
    """Return ``value`` as a float after checking it lies in the interval [lo, hi] (or open ends)."""
    x = finite(owner, field, value)
    below = x <= lo if lo_open else x < lo
    above = x >= hi if hi_open else x > hi
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        fail(owner, field, value, f"in {left}{lo:g}, {hi:g}{right}")
    return x


def integer(owner, field, value, lo, hi=None):
    """Return ``value`` as an int after checking it is a whole number in [lo, hi]."""
    if isinstance(value, bool) or not float(value if _is_number(value) else math.nan).is_integer():
        fail(owner, field, value, f"a whole number ≥ {lo}" + ("" if hi is None else f" and ≤ {hi}"))
    n = int(value)
    if n < lo or (hi is not None and n > hi):
        fail(owner, field, value, f"a whole number in [{lo}, {'∞' if hi is None else hi}]")
    return n


def one_of(owner, field, value, choices):
    """Check ``value`` is one of ``choices``."""
    if value not in choices:
        fail(owner, field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
