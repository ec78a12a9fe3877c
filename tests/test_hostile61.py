"""Hostile cases found in the sixty-first round."""

from __future__ import annotations

import errno
import os

import pytest

from vaekit.errors import VaekitError


def test_a_loss_that_overflows_under_a_huge_beta_names_beta_not_only_the_learning_rate(tmp_path):
    """--beta 1e308 made the loss inf in the first epoch, and the one line said "try a lower
    --lr", which does not help; with beta above 1 the hint names --beta (and its value) first."""
    from vaekit.training.loop import TrainingError, _check_finite

    with pytest.raises(TrainingError, match=r"try a lower --beta \(it is 1e\+308\) or --lr") as e:
        _check_finite([0.0, 0.0, float("inf")], 0, tmp_path, beta=1e308)
    assert "nothing was saved yet" in str(e.value)
    with pytest.raises(TrainingError, match=r"; try a lower --lr\. the last good checkpoint \(epoch 3\)"):
        _check_finite([0.0, 0.0, float("nan")], 3, tmp_path, beta=1.0)


@pytest.mark.parametrize("code", [errno.EILSEQ, errno.EINVAL])
def test_a_name_the_file_system_refuses_is_one_line_not_a_traceback_from_removing_what_never_came_to_be(tmp_path, monkeypatch, code):
    """A name the output's file system refuses (exFAT or vfat: a byte that is not UTF-8, EILSEQ;
    a '|' or '"', EINVAL) is one line naming the file, exit 2: the removal of the temporary file
    that never came to be raised the same error over it, a traceback (exit 3)."""
    from vaekit.fileio import atomic, atomic_write_bytes

    real_open, real_unlink = os.open, os.unlink

    def refuse(path, *a, **k):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *a, **k)

    def refuse_unlink(path, *a, **k):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(atomic, "_unnamed", lambda folder: None)  # no O_TMPFILE (FUSE, macOS)
    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(os, "unlink", refuse_unlink)
    with pytest.raises(VaekitError) as e:
        atomic_write_bytes(tmp_path / "a\udcff.png", b"x")
    assert "a\\xff.png" in str(e.value) or "a\udcff.png" in str(e.value)
