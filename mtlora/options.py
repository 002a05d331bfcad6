"""Up-front checks of numeric options, so a bad value fails at start-up naming the option.

A NaN learning rate, a negative loss weight or a dropout of 1.5 would otherwise start a
week-long run that diverges, trains a task backwards or crashes hours later deep in a layer.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def check_number(
    option: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    integer: bool = False,
) -> float:
    """Return ``value`` if it is a finite (integer) number in range, else raise naming ``option``.

    Args:
        minimum: smallest allowed value (inclusive).
        above: exclusive lower bound.
        below: exclusive upper bound.
        integer: only integers are allowed.
    """
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
        ok = ok and value >= minimum
    if above is not None:
        bounds.append(f"> {above}")
        ok = ok and value > above
    if below is not None:
        bounds.append(f"< {below}")
        ok = ok and value < below
    if not ok:
        wanted = f"{kind} {' and '.join(bounds)}" if bounds else kind
        raise ValueError(f"{option} must be {wanted}, got {value!r}")
    return value
