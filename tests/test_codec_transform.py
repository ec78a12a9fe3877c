"""The lossy residual as block-DCT coefficients (vaekit.codec.transform): exact symbols, honest
bits, bounded error, the choice between it and the pixel coder, and stored tables that are checked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit import codec
from vaekit.codec import lossy, prior as priors, residual, store, tables, transform

from export_support import run_without_torch


def _residuals(n: int, c: int, size: int, scale: float = 20.0, seed: int = 0) -> np.ndarray:
    r = np.rint(np.random.default_rng(seed).laplace(0, scale, (n, c, size, size))).clip(-255, 255).astype(np.int64)
    r[0, 0, :4, :4] = 255  # a block whose mean coefficient is near the largest there can be
    return r


@pytest.mark.parametrize("c, size, block", [(1, 28, 4), (3, 16, 8), (3, 12, 4)])
@pytest.mark.parametrize("step", [64, 8, 1])
def test_symbols_pop_as_pushed_and_the_counted_bits_are_what_the_coder_spends(c, size, block, step):
    r = _residuals(5, c, size)
    sym = transform.quantise(r, step, block)
    seen, low_bits = transform.counts(sym)
    w = transform.fit(sym)
    bits = float((seen * tables.code_lengths(w)).sum()) + low_bits  # what the tables say these symbols cost
    assert w.shape == (transform.rows_for(c, block), 2 * transform.MAX_CLASS + 1)
    coder = tables.ans()
    transform.push(coder, sym, w)
    words = np.asarray(coder.get_compressed(), np.uint32)
    assert abs(len(words) * 32 - bits) <= 64  # an ANS stack's final state: at most two words more
    back = tables.ans(words)
    assert np.array_equal(transform.pop(back, 5, (c, size, size), block, w), sym) and back.is_empty()


def test_an_empty_chunk_and_a_zero_residual_code_to_nothing_much():
    w = transform.fit(transform.quantise(_residuals(3, 3, 16), 16, 8))
    coder = tables.ans()
    transform.push(coder, np.zeros((0, 3, 8, 8, 2, 2), np.int64), w)
    assert coder.is_empty()
    zero = np.zeros((4, 3, 8, 8, 2, 2), np.int64)
    transform.push(coder, zero, w)
    back = tables.ans(np.asarray(coder.get_compressed(), np.uint32))
    assert np.array_equal(transform.pop(back, 4, (3, 16, 16), 8, w), zero)


@pytest.mark.parametrize("step", [64, 16, 4])
def test_the_error_is_that_of_the_dead_zone_quantiser(step):
    """Orthonormal transforms keep squared error: each coefficient is off by at most 3/4 of a step
    (the dead zone's offset), plus the final rounding to 8 bits."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 3, 16, 16)).astype(np.int64)
    x_hat = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).round().astype(np.int64)
    sym = transform.quantise(x - x_hat, step, 8)
    out = transform.reconstruct(x_hat, sym, step)
    mse = ((out.astype(float) - x) ** 2).mean()
    assert out.dtype == np.uint8 and mse <= (0.75 * step) ** 2 + 0.5
    assert mse < ((x_hat - x) ** 2).mean()


def test_a_grey_residual_of_a_colour_image_costs_one_channel():
    """The colour basis: a residual equal in R, G and B leaves the two other channels at zero."""
    r = np.repeat(_residuals(4, 1, 16), 3, axis=1)
    sym = transform.quantise(r, 8, 8)
    assert np.abs(sym[:, 0]).sum() > 0 and not sym[:, 1:].any()


def test_dct_wins_compares_psnr_at_equal_bytes():
    pixel = [(100.0, 30.0), (200.0, 35.0), (300.0, 40.0)]
    better = [(50.0, 30.0), (150.0, 36.0), (350.0, 45.0)]
    worse = [(50.0, 25.0), (150.0, 31.0), (350.0, 38.0)]
    assert store.dct_wins(pixel, better) and not store.dct_wins(pixel, worse)
    assert not store.dct_wins(pixel, [(400.0, 50.0), (500.0, 52.0)])  # no bytes in common: keep the pixel coder


def _with_transform(block: int = 8, channels: int = 3):
    prior, _ = _latent_prior()
    prior.deltas = np.array([0, 0, 0, 64, 32, 16, 8, 4])
    w = transform.fit(transform.quantise(_residuals(4, channels, 16), 16, block))
    prior.residual = [np.zeros((0, 0), np.int64)] * 3 + [w] * 5
    prior.transform = block
    return prior


def _latent_prior(d: int = 5):
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(400, d)) * np.linspace(0.2, 2.0, d)
    return priors.fit(mu, np.full_like(mu, -3.0), (d,), "f" * 16, steps=priors.STEPS), rng


def test_tables_round_trip_with_their_transform_and_older_sets_keep_their_hash():
    prior = _with_transform()
    d = priors.to_dict(prior)
    again = priors.from_dict(d)
    assert again.transform == 8 and again.hash == prior.hash == d["hash"]
    pixel = _with_transform()
    pixel.transform = 0
    assert pixel.hash != prior.hash and "transform" not in priors.to_dict(pixel)
    assert pixel.hash == tables.digest(pixel.steps, pixel.scale, pixel.lo, *pixel.weights, pixel.deltas, *pixel.residual)


@pytest.mark.parametrize("change", ["block 5", "block text", "rows", "columns", "pixel tables"])
def test_damaged_transform_tables_are_refused_in_one_line(change):
    d = priors.to_dict(_with_transform())
    if change == "block 5":
        d["transform"] = 5
    elif change == "block text":
        d["transform"] = "8"
    else:
        if change == "rows":
            w = np.ones((transform.rows_for(2, 8), 2 * transform.MAX_CLASS + 1), np.int64)
        elif change == "columns":
            w = np.ones((transform.rows_for(3, 8), 7), np.int64)
        else:  # the pixel coder's tables under a transform
            w = residual.fit(residual.quantise(_residuals(2, 3, 16), 64), 64)
        w = tables.quantise(w.astype(float))
        d["residual"][3] = priors._pack(w, "<i4")
        bad = priors.from_dict(priors.to_dict(_with_transform()))
        bad.residual[3] = w
        d["hash"] = bad.hash  # a forged set: the hash matches, the shapes do not
    with pytest.raises(ValueError, match="damaged entropy-coding tables") as e:
        priors.from_dict(d, "run x")
    assert "\n" not in str(e.value)


def test_tables_for_grey_images_are_refused_for_colour_ones():
    prior = _with_transform(channels=1)
    with pytest.raises(ValueError, match="other images than 3 x 16 x 16"):
        lossy.residual_symbols(prior, 5, _residuals(2, 3, 16))


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """An untrained colour model, its folder of smooth colour images, and tables fitted each way."""
    from export_support import random_run

    root = tmp_path_factory.mktemp("dct")
    run = random_run(root / "run", image_size=16, channels=3, latent_dim=6, base_channels=4)
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16] / 15.0
    for i in range(24):
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-120, 120, 3), rng.uniform(-120, 120, 3)
        img = np.clip(a + b * yy[..., None] + c * xx[..., None] + rng.normal(0, 6, (16, 16, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(src / f"{i:02d}.png")
    model = vaekit.load(run)
    x = model.load_images(src).images
    return run, src, model, x


def test_a_colour_folder_codes_through_the_dct_and_decodes_without_torch(colour_run, tmp_path):
    run, src, model, x = colour_run
    prior = codec.fit_prior(model, x, residual_coder="dct")
    assert prior.transform == 8
    codec.save_prior(run, prior, model)
    model = vaekit.load(run)
    sizes, errors = [], []
    for q in (4, 6, 8):
        r = codec.encode(model, src, tmp_path / f"q{q}.vkc", quality=q, chunk=10)
        out = codec.decode(model, r.path, tmp_path / f"d{q}")
        got = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in sorted(out.written)])
        mse = ((got.astype(float) - x) ** 2).reshape(len(x), -1).mean(1)
        assert (mse <= (0.75 * prior.deltas[q - 1]) ** 2 + 1).all()
        sizes.append(r.file_bytes)
        errors.append(mse.mean())
    assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True)
    code = (
        "import json, numpy as np\n"
        "from pathlib import Path\n"
        "from vaekit.codec import container, lossy, prior\n"
        f"cfg = json.loads(Path({str(run / 'config.json')!r}).read_text())\n"
        "p = prior.from_dict(cfg['codec'])\n"
        f"h, off = container.read_header(Path({str(tmp_path / 'q6.vkc')!r}))\n"
        "z, res = [], []\n"
        f"for n, words in container.iter_chunks(Path({str(tmp_path / 'q6.vkc')!r}), h, off):\n"
        "    a, b = lossy.decode_chunk(p, 6, words, n, (3, 16, 16))\n"
        "    res.append(b)\n"
        "print(p.transform, sum(len(b) for b in res), int(np.abs(np.concatenate(res)).sum() > 0))\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "24", "1"]


def test_fit_prior_keeps_the_pixel_coder_when_asked_and_refuses_sizes_without_blocks(colour_run):
    _, _, model, x = colour_run
    assert codec.fit_prior(model, x, residual_coder="pixel").transform == 0
    assert codec.fit_prior(model, x).transform in (0, 8)  # auto: whichever measured better here
    with pytest.raises(vaekit.errors.BadInput, match="residual_coder"):
        codec.fit_prior(model, x, residual_coder="jpeg")


@pytest.mark.parametrize("coder", ["auto", "pixel", "dct"])
def test_tables_fit_on_one_image(colour_run, tmp_path, coder):
    """A model of 1024 px or more fits its residual tables on one image (2,048,000 pixels' worth);
    the pixel coder's held-out half was then empty and `vaekit train` ended in a traceback after
    its last epoch. Fitted on one image, the tables code that image and others."""
    run, src, model, x = colour_run
    prior = codec.fit_prior(model, x, residual_pixels=1, residual_coder=coder)
    assert prior.transform in ((0, 8) if coder == "auto" else (0,) if coder == "pixel" else (8,))
    assert all(prior.residual[q - 1] is not None for q in (4, 8))
    r = codec.encode(model, src, tmp_path / "a.vkc", quality=8, prior=prior)
    assert r.count == len(x)


def test_encode_says_how_the_residual_is_coded(colour_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from cli.main import app

    run, src, model, x = colour_run
    codec.save_prior(run, codec.fit_prior(model, x, residual_coder="dct"), model)
    said = {}
    for q in (2, 6):
        r = CliRunner().invoke(app, ["--threads", "1", "encode", str(run), str(src), "-o", str(tmp_path / f"{q}.vkc"),
                                     "--quality", str(q), "--json"])
        assert r.exit_code == 0, r.output
        said[q] = json.loads(r.output)["residual"]
    assert said == {2: None, 6: "dct 8x8"}
    r = CliRunner().invoke(app, ["--threads", "1", "encode", str(run), str(src), "-o", str(tmp_path / "t.vkc"),
                                 "--quality", "5"])
    assert r.exit_code == 0 and "residual in 8x8 DCT blocks" in r.output
    codec.save_prior(run, codec.fit_prior(model, x, residual_coder="pixel"), model)
    r = CliRunner().invoke(app, ["--threads", "1", "encode", str(run), str(src), "-o", str(tmp_path / "p.vkc"),
                                 "--quality", "5", "--json"])
    assert json.loads(r.output)["residual"] == "pixels"


def test_a_dct_better_at_every_quality_wins_even_where_the_curves_do_not_overlap():
    """Smooth images: the DCT's whole curve lies below the pixel coder's bytes and above its PSNR."""
    pixel = [(3292.0, 23.7), (5000.0, 30.0), (17505.0, 47.0)]
    assert store.dct_wins(pixel, [(371.0, 33.6), (800.0, 40.0), (1319.0, 51.2)])
    assert not store.dct_wins(pixel, [(371.0, 20.0), (800.0, 21.0), (1319.0, 22.0)])  # cheaper, but worse
    # one point of each in the other's range is enough when the margins agree
    assert store.dct_wins([(1588.8, 26.26), (3581.6, 29.98), (6068.8, 35.13)],
                          [(868.0, 28.55), (1679.2, 32.06), (3012.8, 36.15)])


def test_ties_round_the_same_whatever_the_last_bits():
    """A DC coefficient of exactly 3 at step 4 (0.75 + 0.25 = 1) is symbol 1, and a pixel of exactly
    x.5 rounds one way, even where float summation lands a bit below."""
    r = np.zeros((1, 1, 8, 8), np.int64)
    r[0, 0, 0, :3] = 8  # a sum of 24: DC = 24 / 8 = 3
    assert transform.quantise(r, 4, 8)[0, 0, 0, 0, 0, 0] == 1
    assert np.array_equal(transform._snapped(np.array([0.49999999999999994, 0.5, 0.5000000000000001])), [0.5] * 3)
    s = np.zeros((1, 1, 8, 8, 1, 1), np.int64)
    s[0, 0, 0, 0] = 1  # every pixel + 0.5
    assert (transform.reconstruct(np.full((1, 1, 8, 8), 100), s, 4) == 100).all()  # half to even


@pytest.mark.parametrize("change", ["negative step", "narrow pixel table"])
def test_forged_pixel_residual_tables_are_refused_in_one_line(change):
    prior = _with_transform()
    prior.transform = 0
    prior.residual = [np.zeros((0, 0), np.int64)] * 3 + [
        residual.fit(residual.quantise(_residuals(2, 3, 16), int(d)), int(d)) for d in prior.deltas[3:]]
    if change == "negative step":
        prior.deltas = np.array([0, 0, -1, 64, 32, 16, 8, 4])
    else:
        prior.residual[4] = tables.quantise(np.ones((residual.CONTEXTS, 3)))  # 3 symbols where step 32 needs 17
    d = priors.to_dict(prior)
    with pytest.raises(ValueError, match="damaged entropy-coding tables") as e:
        priors.from_dict(d, "run x")
    assert "\n" not in str(e.value)


def test_encode_refuses_given_tables_that_cannot_code_the_models_images(colour_run, tmp_path):
    run, src, model, x = colour_run
    grey = _with_transform(channels=1)
    grey.fingerprint = model.info.fingerprint
    grey.latent_shape = tuple(model.info.latent_shape)
    with pytest.raises(vaekit.errors.BadInput, match="cannot code this model's images"):
        codec.encode(model, src, tmp_path / "x.vkc", quality=5, prior=grey)
    assert not (tmp_path / "x.vkc").exists()
