"""Numbers from the page's widgets, checked before a handler uses them. A slider sends 6.0 for 6,
and a request made by hand can send anything Gradio's own checks let through: JSON's NaN passes
a slider's bounds (NaN compares false with both)."""

from __future__ import annotations

import math

from vaekit.errors import BadInput


def whole(value, what: str) -> int:
    """A widget's whole number as an int; BadInput for NaN, infinity, a fraction or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise BadInput(f"{what} must be a whole number, got {value!r:.40}")
    return int(value)
