"""The seventeenth hostile round, on the lossy tables a model carries (a run's config.json "codec",
an export's metadata "vaekit.codec"; both reach vaekit.codec.prior.from_dict): a few hundred kB
of zlib in a table's "data" inflated to 1 GB before its shape was compared (a hostile .onnx or
run is a memory bomb for `decode`), and a scale of infinity (its hash recomputed, as anyone can)
decoded to NaN latents behind a numpy RuntimeWarning, two lines more than the one-line refusal;
and an output name longer than 255 bytes was a traceback (ENAMETOOLONG), exit 3, from every command."""

from __future__ import annotations

import base64
import functools
import json
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.codec import prior as priors
from cli_support import invoke, one_line_exit_2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    """(run, .vkc): an untrained 16 px grey logistic model with fitted tables and a quality-5 file."""
    import vaekit
    from vaekit import codec
    from export_support import random_run

    root = tmp_path_factory.mktemp("hostile17")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(src / f"i{i}.png")
    model = vaekit.load(run)
    x = np.stack([np.asarray(Image.open(p), np.float32)[None] / 255 for p in sorted(src.iterdir())])
    codec.save_prior(run, codec.fit_prior(model, x), model)
    return run, codec.encode(vaekit.load(run), src, root / "a.vkc", quality=5).path


def _section(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["codec"]


@functools.cache  # the same text for the same size: compressing 64 MB once, not twice (0.26 s each)
def _bomb(mb: int) -> str:
    return base64.b64encode(zlib.compress(bytes(mb << 20), 9)).decode()


def test_a_zlib_bomb_in_the_tables_is_refused_without_inflating_it(lossy):
    """Before: zlib.decompress had no bound, so 64 kB of "data" for a table of 8 floats became
    64 MB (1 GB from a 550 kB config.json, measured) before reshape refused it."""
    run, _ = lossy
    d = _section(run)
    d["steps"]["data"] = _bomb(64)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="damaged entropy-coding tables"):
            priors.from_dict(d, "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_a_table_shape_beyond_any_vaekit_writes_is_refused_before_inflating(lossy):
    run, _ = lossy
    d = _section(run)
    d["weights"][0]["shape"] = [1 << 20, 1 << 20]
    d["weights"][0]["data"] = _bomb(32)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than any vaekit writes"):
            priors.from_dict(d, "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_decode_with_a_bombed_run_is_one_line_exit_2_and_writes_nothing(lossy, tmp_path):
    run, vkc = lossy
    cfg = json.loads((run / "config.json").read_text())
    bad = tmp_path / "run"
    bad.mkdir()
    for p in run.iterdir():
        if p.is_file():
            (bad / p.name).write_bytes(p.read_bytes())
    cfg["codec"]["scale"]["data"] = _bomb(64)
    (bad / "config.json").write_text(json.dumps(cfg))
    out = one_line_exit_2(invoke("decode", bad, vkc, "-o", tmp_path / "out"))
    assert "damaged entropy-coding tables" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tables_with_an_infinite_scale_are_damaged_tables_not_a_numpy_warning(lossy):
    """The hash covers the tables, but anyone who edits them can recompute it: a scale of inf
    made every latent inf * 0 = NaN with a RuntimeWarning on stderr, then "latent codes must be finite"."""
    run, _ = lossy
    prior = priors.from_dict(_section(run))
    prior.scale[:] = np.inf
    d = priors.to_dict(prior)  # a valid hash of the altered tables
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="damaged entropy-coding tables: .*not finite"):
            priors.from_dict(d, "run")


@pytest.mark.parametrize("field, value", [("scale", 0.0), ("scale", -1.0), ("steps", 0.0), ("steps", -2.0)])
def test_tables_with_a_step_or_scale_of_zero_or_below_are_damaged_tables(lossy, field, value):
    """A step or scale of 0 (hash recomputed) passed the finite check: encode printed numpy's
    divide-by-zero warnings and coded every latent as one symbol; a negative one flipped them."""
    run, _ = lossy
    prior = priors.from_dict(_section(run))
    getattr(prior, field)[0] = value
    d = priors.to_dict(prior)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="damaged entropy-coding tables: .*not positive"):
            priors.from_dict(d, "run")


def test_latents_beyond_float32_give_no_numpy_warning(lossy):
    """A finite step whose latents overflow float32 (1e38 times a symbol) warned on stderr; the
    inf is refused downstream in one line ("latent codes must be finite")."""
    run, _ = lossy
    prior = priors.from_dict(_section(run))
    prior.steps[:] = 1e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = priors.latents(prior, np.full((1, 4), 100, np.int64), 1)
    assert not np.isfinite(z).all()


def test_the_model_latent_shape_is_checked_before_any_table_is_inflated(lossy):
    run, _ = lossy
    d = _section(run)
    d["latent_shape"] = [1 << 19]  # a budget of tables for half a million channels
    d["weights"][0]["data"] = _bomb(64)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="latent shape"):
            priors.from_dict(d, "run", latent_shape=(4,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


@pytest.mark.parametrize("command", ["encode", "encode-lossless", "decode", "decode-sub"])
def test_an_output_name_longer_than_the_file_system_takes_is_one_line_exit_2(lossy, tmp_path, command):
    """A 256-byte file or folder name in -o raised ENAMETOOLONG from the first stat of it: a
    traceback and exit 3 ("a bug in vaekit") from encode, decode and export alike."""
    run, vkc = lossy
    long = "n" * 256
    args = {"encode": ("encode", run, vkc.parent / "src", "-o", tmp_path / f"{long}.vkc", "--quality", "2"),
            "encode-lossless": ("encode", run, vkc.parent / "src", "-o", tmp_path / long / "a.vkc", "--lossless"),
            "decode": ("decode", run, vkc, "-o", tmp_path / long),
            "decode-sub": ("decode", run, vkc, "-o", tmp_path / long / "sub")}[command]
    out = one_line_exit_2(invoke(*args))
    assert "a name longer than the file system takes" in out
    assert list(tmp_path.iterdir()) == []
