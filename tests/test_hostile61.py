"""Hostile cases found in the sixty-first round."""

from __future__ import annotations

import pytest


def test_a_loss_that_overflows_under_a_huge_beta_names_beta_not_only_the_learning_rate(tmp_path):
    """--beta 1e308 made the loss inf in the first epoch, and the one line said "try a lower
    --lr", which does not help; with beta above 1 the hint names --beta (and its value) first."""
    from vaekit.training.loop import TrainingError, _check_finite

    with pytest.raises(TrainingError, match=r"try a lower --beta \(it is 1e\+308\) or --lr") as e:
        _check_finite([0.0, 0.0, float("inf")], 0, tmp_path, beta=1e308)
    assert "nothing was saved yet" in str(e.value)
    with pytest.raises(TrainingError, match=r"; try a lower --lr\. the last good checkpoint \(epoch 3\)"):
        _check_finite([0.0, 0.0, float("nan")], 3, tmp_path, beta=1.0)
