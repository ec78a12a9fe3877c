"""vaekit.codec: integer tables, the learned prior, lossy and lossless (bits-back) round trips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vaekit.codec import bitsback, lossy, tables
from vaekit.codec import prior as priors


def _digits(folder, n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """n small gray images with structure (a blob and a bar) written as PNGs; some in a sub-folder."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, cx, r = rng.uniform(4, size - 4, 2).tolist() + [rng.uniform(2, 5)]
        img = 255.0 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
        img[:, int(rng.integers(0, size))] = rng.integers(60, 200)
        x = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        out.append(x[None])
        path = folder / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(path)
    return np.stack(out)


@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory):
    from export_support import random_run

    return random_run(tmp_path_factory.mktemp("codec") / "run", image_size=16, channels=1, latent_dim=6,
                      base_channels=4, likelihood="logistic")


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory):
    """A logistic model without a pixel context: pixels independent given z, as before vaekit 0.3."""
    from export_support import random_run

    return random_run(tmp_path_factory.mktemp("codec") / "run0", image_size=16, channels=1, latent_dim=6,
                      base_channels=4, likelihood="logistic", pixel_context=0)


# --- tables ------------------------------------------------------------------------------------

def test_integer_tables_code_exactly_their_lengths_and_pop_undoes_push():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(40, 0.2), size=3000)
    w = tables.quantise(p)
    assert (w.sum(1) == tables.TOTAL - 40).all() and (w >= 0).all()
    sym = np.array([rng.choice(40, p=row) for row in p])
    start = rng.integers(1, 2**32, 16, dtype=np.uint32)
    coder = tables.ans(start)
    tables.push(coder, sym, w)
    spent = coder.num_bits() - 32 * len(start)
    assert abs(spent - tables.bits(w, sym).sum()) < 64  # the ANS state's flush, nothing else
    again = tables.ans(coder.get_compressed())
    assert np.array_equal(tables.pop(again, w), sym)
    assert np.array_equal(again.get_compressed(), start)  # and the stack is back where it began


def test_a_table_that_is_not_normalised_is_refused():
    w = tables.quantise(np.ones((2, 5)))
    tables.check(w)
    w[0, 0] += 1
    with pytest.raises(ValueError, match="normalised"):
        tables.check(w)


# --- the prior ---------------------------------------------------------------------------------

def _prior(d: int = 5, shape=None):
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(400, d)) * np.linspace(0.2, 2.0, d)
    return priors.fit(mu, np.full_like(mu, -3.0), shape or (d,), "f" * 16, steps=priors.STEPS), rng  # latents only


def test_prior_round_trips_through_json_and_refuses_changed_tables():
    prior, _ = _prior()
    again = priors.from_dict(priors.to_dict(prior))
    assert again.hash == prior.hash and all(np.array_equal(a, b) for a, b in zip(again.weights, prior.weights))
    d = priors.to_dict(prior)
    d["weights"][2] = priors.to_dict(_prior(5)[0])["weights"][0]  # another quality's (coarser) tables
    with pytest.raises(ValueError, match="damaged"):
        priors.from_dict(d)


@pytest.mark.parametrize("bad", [0, 9, 2.5, "4", True])
def test_quality_is_checked_and_named(bad):
    prior, _ = _prior()
    with pytest.raises(ValueError, match="quality"):
        priors.symbols(prior, np.zeros((1, 5)), bad)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 3)])
def test_lossy_chunk_round_trip_is_exact_and_finer_quality_costs_more(shape):
    d = int(np.prod(shape))
    prior, rng = _prior(d, shape)
    z = rng.normal(size=(50, d)) * np.linspace(0.2, 2.0, d)
    sizes, errors = [], []
    for q in priors.QUALITIES:
        sym, z_hat = lossy.latent_symbols(prior, q, z)
        words = lossy.encode_chunk(prior, q, sym)
        back, res = lossy.decode_chunk(prior, q, words, len(z), (1, 4, 4))
        assert np.array_equal(back, z_hat) and res is None  # the very symbols, bit for bit
        sizes.append(len(words))
        errors.append(np.abs(back - z).mean())
    assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True) and sizes[-1] > sizes[0]


# --- bits-back ---------------------------------------------------------------------------------

def test_posterior_tables_follow_the_posterior():
    _, centres = bitsback.latent_grid(8)

    def moments(mu, sd):
        w = bitsback.posterior_tables(np.asarray(mu, float), np.log(np.asarray(sd, float) ** 2), 8)
        p = w / w.sum(1, keepdims=True)
        return (p * centres).sum(1), -(p * np.log2(np.where(p > 0, p, 1))).sum(1)

    mean, _ = moments([0.0, 1.5, -2.0], [0.1, 0.2, 1.0])
    assert (np.abs(mean - [0.0, 1.5, -2.0]) < [0.01, 0.01, 0.15]).all()  # a wide one loses its far tail to the end bucket
    _, entropy = moments([0.5] * 3, [0.05, 0.2, 1.0])
    assert entropy[0] < entropy[1] < entropy[2]  # a narrow posterior pins z down, a wide one does not


@pytest.mark.parametrize("run", ["logistic_run", "independent_run"])
def test_lossless_round_trip_costs_the_elbo(tmp_path, run, request):
    import vaekit
    from vaekit.codec.net import Net

    model = vaekit.load(request.getfixturevalue(run))
    x = _digits(tmp_path / "src", 24)
    net = Net(model)
    words, spent = bitsback.encode_chunk(net, x)
    back = list(bitsback.decode_chunk(net, words, len(x)))[::-1]
    assert np.array_equal(np.stack(back), x)
    elbo_bits = model.score(x, samples=8, score="neg_elbo", maps=False).neg_elbo.sum() / np.log(2)
    checks = bitsback.CHECK_BITS * len(x)
    assert spent - checks == pytest.approx(elbo_bits, rel=0.02)


def test_waves_decode_every_pixel_after_its_neighbours():
    for h, w in [(1, 1), (4, 9), (9, 4), (16, 16)]:
        group = np.full((h, w), -1)
        for t, (rows, cols) in enumerate(bitsback.waves(h, w)):
            group[rows, cols] = t
        assert (group >= 0).all() and sum(len(r) for r, _ in bitsback.waves(h, w)) == h * w
        for i in range(h):
            for j in range(w):
                for dy, dx in bitsback.NEIGHBOURS:
                    if 0 <= i + dy < h and 0 <= j + dx < w:
                        assert group[i + dy, j + dx] < group[i, j]


def test_pixel_context_codes_what_the_objective_counts():
    """push_pixels / pop_pixels with a pixel context: exact, and the bits are the torch NLL that
    training minimises (the coder and the objective read the same neighbours)."""
    import torch

    from vaekit.model.objective import Logistic

    rng = np.random.default_rng(3)
    c, h, w = 3, 7, 11
    x = rng.integers(0, 256, (c, h, w)).astype(np.uint8)
    x[:, 2:5, 3:8] = 128 + rng.integers(-3, 4, (c, 3, 5))  # a smooth patch the neighbours predict
    mean = x / 255.0 + rng.normal(0, 0.05, x.shape)  # a roughly right decoder: no bin at a 16-bit table's floor
    params = np.concatenate([mean, rng.uniform(-3.5, -2, (c, h, w)), rng.uniform(-1, 1, (4 * c, h, w))]).astype(np.float32)
    start = bitsback.initial_words(4)
    coder = tables.ans(start)
    bitsback.push_pixels(coder, x, params)
    spent = coder.num_bits() - 32 * len(start)
    back = bitsback.pop_pixels(tables.ans(coder.get_compressed()), params, x.shape)
    assert np.array_equal(back, x)
    nll = Logistic.nll(torch.from_numpy(x[None] / 255.0), torch.from_numpy(params[None]).double()).sum().item()
    assert spent == pytest.approx(nll / np.log(2), rel=0.01, abs=64)
    independent = Logistic.nll(torch.from_numpy(x[None] / 255.0), torch.from_numpy(params[None, :2 * c]).double())
    assert independent.sum().item() != pytest.approx(nll, rel=1e-3)  # the context changed the code


def _objects_on_black(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    """n grey images (n, 1, size, size) uint8: a textured disc on exact black, as product photos are."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(5, size - 5, 2).tolist() + [rng.uniform(3, 5)]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        out[i, 0][inside] = np.clip(rng.uniform(60, 230) + rng.normal(0, 6, inside.sum()), 1, 255).astype(np.uint8)
    return out


def test_a_fitted_pixel_model_codes_exactly_and_each_part_pays():
    """vaekit.codec.fitted: exact round trips, the JSON round trip, and each of its parts (the
    neighbours' weights, the spread by context, the probability of level 0) makes the code shorter
    on objects on black, with the decoder's mean a blurred copy of the image (as a VAE's is)."""
    from vaekit.codec import fitted

    x = _objects_on_black(48)  # 40 to fit on, 8 held out (each coded and decoded once per part)
    rng = np.random.default_rng(1)
    # a VAE's mean: blurred, the object's grey level off by a factor its own (which the neighbours
    # show), and exact 0 never predicted outright
    blur = [(xi / 255.0 + np.roll(xi / 255.0, 1, 2) + np.roll(xi / 255.0, 1, 1)) / 3 for xi in x]
    m = [b * rng.uniform(0.7, 1.3) - 0.01 for b in blur]
    full = fitted.fit("gaussian", list(x[:40]), m[:40])
    assert fitted.PixelModel.from_json(full.to_json(), "gaussian", 1).to_json() == full.to_json()
    parts = {
        "full": full,
        "no weights": fitted.PixelModel("gaussian", 0 * full.weights, full.log_scale, full.p0, full.p255),
        "one spread": fitted.PixelModel("gaussian", full.weights, np.full_like(full.log_scale, np.median(full.log_scale)),
                                        full.p0, full.p255),
        "no level 0": fitted.PixelModel("gaussian", full.weights, full.log_scale, full.p0 * np.nan, full.p255),
    }
    start = bitsback.initial_words(4)
    cost = {}
    for name, pm in parts.items():
        coder = tables.ans(start)
        for xi, mi in zip(x[40:], m[40:]):  # images the model was not fitted on
            bitsback.push_pixels(coder, xi, mi, pm)
        cost[name] = coder.num_bits() - 32 * len(start)
        back = tables.ans(coder.get_compressed())
        for xi, mi in reversed(list(zip(x[40:], m[40:]))):
            assert np.array_equal(bitsback.pop_pixels(back, mi, xi.shape, pm), xi)
    assert all(cost["full"] < cost[k] for k in parts if k != "full"), cost
    with pytest.raises(ValueError, match="p0"):
        bad = full.to_json()
        bad["p0"][0][3] = 1.0
        fitted.PixelModel.from_json(bad, "gaussian", 1)


def test_a_desynchronised_decoder_refuses(tmp_path, logistic_run, monkeypatch):
    import vaekit
    from vaekit.codec.net import Net

    model = vaekit.load(logistic_run)
    x = _digits(tmp_path / "src", 6)
    net = Net(model)
    words, _ = bitsback.encode_chunk(net, x)
    honest = net.likelihood
    # another engine's floats: the same network, its outputs off in the last bits
    monkeypatch.setattr(net, "likelihood", lambda z: honest(z) * np.float32(1 + 3e-7))
    with pytest.raises(bitsback.Desynchronised):
        list(bitsback.decode_chunk(net, words, len(x)))


def test_residual_rows_round_trip_and_bound_the_error():
    from vaekit.codec import residual

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (30, 3, 8, 8)).astype(np.uint8)
    x_hat = np.clip(x.astype(np.int64) + rng.integers(-40, 41, x.shape), 0, 255)
    for delta in (1, 4, 32):
        sym = residual.quantise(x.astype(np.int64) - x_hat, delta)
        w = residual.fit(sym, delta)
        coder = tables.ans()
        residual.push(coder, sym, w)
        back = residual.pop(tables.ans(coder.get_compressed()), len(x), (3, 8, 8), w)
        assert np.array_equal(back, sym)
        err = np.abs(residual.reconstruct(x_hat, back, delta).astype(int) - x)
        assert err.max() <= delta // 2 and (delta > 1 or err.max() == 0)  # delta 1 is exact


def test_header_round_trips_compactly_and_refuses_garbage():
    from vaekit.codec import header as hdr

    many = hdr.Header("lossy", "0123456789abcdef", "fedcba9876543210", 28, 3, 392,
                      [f"dir/{i:05d}.png" for i in range(3000)], [[28, 28]] * 2999 + [[480, 640]],
                      [[1024, 9000], [1024, 1], [952, 123456789]], quality=7)
    data = hdr.pack(many)
    assert hdr.unpack(data) == many and len(data) < 3000  # names and sizes compress to < 1 byte each
    one = hdr.Header("lossless", "0123456789abcdef", "0" * 16, 16, 1, 4, ["a.png"], [[16, 16]], [[1, 40]],
                     engine={"engine": "torch", "threads": 1})
    assert hdr.unpack(hdr.pack(one)) == one
    single = hdr.Header("lossy", "0" * 16, "0" * 16, 28, 1, 32, ["00000.png"], [[28, 28]], [[1, 3]], quality=1)
    assert len(hdr.pack(single)) <= 37  # 27 fixed bytes and the 9-byte name, raw
    odd = hdr.Header("lossy", "0" * 16, "0" * 16, 28, 1, 32, ["a.png", "b/c.png"], [[28, 28], [5, 9]], [[2, 3]],
                     quality=2)
    assert hdr.unpack(hdr.pack(odd)) == odd
    with pytest.raises(ValueError, match="NUL"):
        hdr.pack(hdr.Header("lossy", "0" * 16, "0" * 16, 28, 1, 32, ["a\0b"], [[28, 28]], [[1, 3]], quality=1))
    for bad in (data[:-1], data + b"\0", b"\x09" + data[1:], data[:20]):
        with pytest.raises((ValueError, KeyError, TypeError)):
            hdr.unpack(bad)
    with pytest.raises(ValueError, match="hex"):
        hdr.pack(hdr.Header("lossy", "abc", "0" * 16, 28, 1, 32, [], [], [], quality=1))



def test_names_compress_to_the_same_bytes_as_with_the_presets_whole_window():
    """The names' LZMA2 window is sized to the names (the preset's 64 MiB one cost ~60 ms an
    encode to set up): the same bytes as the preset gives, so the format does not move."""
    import json
    import lzma

    from vaekit.codec import header as hdr

    for n in (300, 5000):  # (a handful of names goes to zlib)
        raw = json.dumps([[f"photos/set_{i // 500}/IMG_{i:05d}.JPG", [640 + i % 7, 480]] for i in range(n)]).encode()
        packed = hdr._compress(raw)
        assert packed == b"\2" + lzma.compress(raw, lzma.FORMAT_RAW, filters=hdr._LZMA2), n
        assert hdr._decompress(packed) == raw

# --- the comparison: Pillow files, WebP at a given size ----------------------------------------

def test_webp_at_size_is_the_closest_webp_file_and_reports_its_own_numbers(tmp_path):
    from vaekit.images import quality
    from vaekit.codec import compare

    x = _digits(tmp_path, 3, size=28)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 24, 24), dtype=np.uint8)
    for img in (*x, rgb):
        sizes = [compare.pillow_file(img, "WebP", q)[0] for q in compare.WEBP_QUALITIES]
        for target in (1, min(sizes) + 7, int(np.median(sizes)), max(sizes) + 50):
            r = compare.webp_at_size(img, target)
            assert r.fmt == "WebP" and r.bytes == sizes[r.quality]  # the file the quality writes
            assert abs(r.bytes - target) == min(abs(s - target) for s in sizes)  # none is closer
            n, dec = compare.pillow_file(img, "WebP", r.quality)
            assert n == r.bytes and np.array_equal(dec, r.decoded) and dec.shape == img.shape
            assert r.psnr == pytest.approx(quality.psnr(img[None], dec[None])[0])


def test_webp_at_size_refuses_what_is_not_one_image_or_a_size():
    from vaekit.codec import compare
    from vaekit.errors import BadInput

    img = np.zeros((1, 16, 16), np.uint8)
    with pytest.raises(BadInput, match="invalid target size 0"):
        compare.webp_at_size(img, 0)
    with pytest.raises(BadInput, match=r"expected one \(C, H, W\) uint8 image"):
        compare.webp_at_size(img.astype(np.float32), 100)
    with pytest.raises(BadInput, match="uint8 image with 1 or 3 channels"):
        compare.pillow_file(np.zeros((2, 16, 16), np.uint8), "WebP", 50)


def test_a_new_archive_removes_the_chunk_files_of_encodes_that_were_killed(tmp_path):
    import os

    from vaekit.codec import container

    from vaekit.fileio.leftovers import partial_tag

    out = tmp_path / "a.vkc"
    stale = tmp_path / ".a.vkc.999999999.chunks"  # no such process: a SIGKILLed encode's spill
    live = tmp_path / f".a.vkc.{os.getppid()}.chunks"  # a process that runs: not ours to remove
    other = tmp_path / ".b.vkc.999999999.chunks"  # another archive's
    for p in (stale, other):
        p.write_bytes(partial_tag(999999999) + b"words")
    live.write_bytes(partial_tag(os.getppid()) + b"words")
    users = tmp_path / ".a.vkc.999999998.chunks"  # only named like one: a user's file, never vaekit's to remove
    users.write_bytes(b"precious")
    foreign = tmp_path / ".a.vkc.999999997.chunks"  # the tag of another process than its name says
    foreign.write_bytes(partial_tag(999999999) + b"words")
    spill = container.Spill(out)
    assert spill.path.read_bytes() == partial_tag()  # on disk before any work: a SIGKILL now leaves a known file
    spill.close()
    assert not stale.exists() and live.exists() and other.exists() and not spill.path.exists()
    assert users.read_bytes() == b"precious" and foreign.exists()
