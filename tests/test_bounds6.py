"""Resource bounds a hostile (or merely large) input could break: time that grows faster than the
input, memory that should be bounded by pixels, output that should be bounded by what was asked."""

from __future__ import annotations

import numpy as np
import pytest


class _CountedDigest(bytes):
    """A digest that counts how often it is compared with another."""

    compared = 0

    def __eq__(self, other):
        type(self).compared += 1
        return bytes.__eq__(self, other)

    __hash__ = bytes.__hash__


def test_overlap_check_is_not_quadratic_in_same_size_files(tmp_path, monkeypatch):
    """threshold --normal checks the new images against the training images by content. Files of
    one size (every 16 px BMP) were each compared with every training file of that size: 22 s
    for 10k against 10k. A digest is now looked up, so comparisons stay near the file count."""
    from vaekit.anomaly import overlap

    n = 150
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for folder, tag in ((mine, b"m"), (theirs, b"t")):
        folder.mkdir()
        for i in range(n):
            (folder / f"{i:04d}.bmp").write_bytes(tag + i.to_bytes(4, "big"))  # all 5 bytes, all different
    monkeypatch.setattr(overlap, "_sha256", lambda p: _CountedDigest(open(p, "rb").read()))
    _CountedDigest.compared = 0
    assert overlap.first_shared(sorted(mine.iterdir()), sorted(theirs.iterdir())) is None
    assert _CountedDigest.compared <= 2 * n  # was n * n = 22,500
    # a copy is still found, as the first file of theirs with those bytes
    (mine / "zz.bmp").write_bytes(b"t" + (7).to_bytes(4, "big"))
    (theirs / "zz-second.bmp").write_bytes(b"t" + (7).to_bytes(4, "big"))
    found = overlap.first_shared(sorted(mine.iterdir()), sorted(theirs.iterdir()))
    assert found == (mine / "zz.bmp", theirs / "0007.bmp")
