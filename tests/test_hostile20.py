"""Hostile inputs, pass 20: what earlier passes left (tests/test_hostile*.py).

Each test names the input and what vaekit must do with it: one line naming the problem, the
documented exit code, nothing written that vaekit did not create.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vaekit.errors import BadInput
from vaekit.images.arrays import as_latents


def test_latents_beyond_float32_are_refused_as_such_without_a_numpy_warning():
    # 1e300 is finite: it overflowed in the cast to float32 (a RuntimeWarning), then was refused
    # as "NaN or infinity", a value the caller never gave
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadInput, match="float32") as e:
            as_latents(np.full((1, 2), 1e300), 2)
        assert "NaN" not in str(e.value)
        with pytest.raises(BadInput, match="finite"):
            as_latents(np.full((1, 2), np.inf), 2)
        np.testing.assert_array_equal(as_latents([[3e38, -3e38]], 2), np.array([[3e38, -3e38]], np.float32))
