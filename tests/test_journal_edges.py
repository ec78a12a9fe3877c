"""Edges of streaming jobs a helper's review found (2026-12-06): a row a journal may hold, output
folders spelled `.` or `..`, refused heat-map folders, batches whose journal lines a power cut
lost, temporary files a SIGKILL left.

Real components: an untrained model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import base64

import numpy as np


def test_a_code_row_holds_only_sizes_a_code_file_can_store():
    # a size of 2**31 passed the check and the code file's int32 array raised OverflowError (exit 3)
    from vaekit.codes.jobs import _row_check

    check = _row_check(["a.png"], 2)
    row = {"name": "a.png", "bytes": 10, "mu": base64.b64encode(np.zeros(2, "<f4").tobytes()).decode()}
    assert check({**row, "size": [(1 << 31) - 1, 5]}, 0) is None
    assert "is not [height, width]" in check({**row, "size": [1 << 31, 5]}, 0)
