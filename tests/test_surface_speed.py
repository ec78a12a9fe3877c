"""The surface path's shortcuts give the very numbers of the long way: windows read from the pixel
cache row by row are the windows cut from whole images, and calibration's scores without maps are
read()'s scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit.training.crops import crop_batch, gather_crops
from vaekit.training.data import gather, read_ahead


def _cache(tmp_path, shape, seed=0) -> np.ndarray:
    path = tmp_path / f"pixels{seed}.npy"
    a = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    a[:] = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    a.flush()
    del a
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("shape", [(7, 1, 100, 130), (5, 3, 96, 64), (3, 1, 64, 64)])
def test_windows_read_from_the_cache_are_the_windows_of_whole_images(tmp_path, shape):
    images = _cache(tmp_path, shape)
    for idx, seed in (([0, 2, 1], [1, 2, 3]), ([len(images) - 1], [7, 4]), ([0, 0, 1], 5)):
        idx = np.array(idx)
        want = crop_batch(torch.from_numpy(gather(images, idx)), 64, seed)
        got = gather_crops(images, idx, 64, seed)
        assert got.shape == (len(idx), shape[1], 64, 64) and got.dtype == torch.uint8
        assert torch.equal(got, want)
        assert torch.equal(gather_crops(np.array(images), idx, 64, seed), want)  # in memory: the same
    with pytest.raises(IndexError):
        gather_crops(images, np.array([len(images)]), 64, 0)


def test_read_ahead_with_crops_reads_each_batch_s_windows(tmp_path):
    images = _cache(tmp_path, (6, 1, 80, 90), seed=1)
    batches = [np.array([0, 3]), np.array([1, 2, 5])]
    seeds = [[0, 1, step] for step in range(len(batches))]
    got = list(read_ahead(images, iter(batches), torch.device("cpu"), crop=32, seeds=iter(seeds)))
    for x, idx, seed in zip(got, batches, seeds):
        assert torch.equal(x, crop_batch(torch.from_numpy(gather(images, idx)), 32, seed))


def test_calibration_scores_are_read_s_scores():
    from vaekit.reader.net import ReaderConfig, ReaderEnsemble, ReaderNet
    from vaekit.reader.train import read, score_images

    torch.manual_seed(0)
    net = ReaderEnsemble([ReaderNet(1, ReaderConfig()) for _ in range(3)]).eval()
    x = np.random.default_rng(2).integers(0, 256, (3, 1, 80, 72), dtype=np.uint8)
    for tile in (None, 48):
        scores, maps = read(net, x, tile=tile, batch=2)
        assert maps.shape == (3, 80, 72)
        np.testing.assert_array_equal(score_images(net, x, tile=tile, batch=2), scores)
    assert score_images(net, x[:0]).shape == (0,)
