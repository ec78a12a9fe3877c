"""Hostile cases found in the sixtieth round: inputs that change under a finished job's feet."""

from __future__ import annotations

import numpy as np
from PIL import Image

from export_support import acting_model, random_job


def test_an_input_removed_after_its_batch_leaves_a_grey_tile_in_the_grid_not_a_failed_reconstruct(tmp_path):
    """The comparison grid decodes the first inputs again at the end. One removed after its batch
    was reconstructed failed the whole job there (exit 2, every PNG written, the journal left, and
    --resume refused, since the file list had changed): now its tile is grey and the job is done."""
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, images = random_job(tmp_path / "job", 6)
    gone = images / "img000.png"
    model = acting_model(run, "reconstruct", at=2, action=gone.unlink)  # as batch 2 of 3 begins
    report = reconstruct_to_folder(model, images, tmp_path / "out", batch_size=2, workers=0)
    assert not gone.exists() and len(report.names) == 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.png", *(f"img{i:03d}.png" for i in range(6))]
    assert not list((tmp_path / "out").glob("*.partial"))  # the job finished: no journal left
    with Image.open(report.grid) as g:
        grid = np.asarray(g)
    tile = grid[2:18, 2:18]  # the first input's place (2 px gaps, 16 px tiles)
    assert (tile == 128).all()
    again = np.asarray(Image.open(tmp_path / "out" / "img000.png"))
    np.testing.assert_array_equal(grid[2:18, 20:36], again)  # its reconstruction beside it
