"""The learned pixel model of lossless archives (vaekit/codec/learned.py, learned_fit.py): what it
reads is causal in the decoder's order, it codes exactly, the header's copy is checked, and an
archive carries it only where it measured smaller than the context model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit.codec import bitsback, container, fitted, learned, learned_fit, tables


@pytest.fixture
def quick(monkeypatch):
    """A short training: these tests check the mechanics, docs/codec.md has what the full one codes."""
    monkeypatch.setattr(learned, "STEPS", 300)
    monkeypatch.setattr(learned, "BATCH", 256)


def _stripes(n: int, size: int = 16, channels: int = 1, seed: int = 0):
    """Images whose level a pixel's left neighbours predict and a smooth mean does not: stripes of
    random phase and slope over a black third; the means a flat grey over the stripes, 0 beside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x, m = [], []
    for _ in range(n):
        img = 128 + 100 * np.sin(xx * rng.uniform(0.6, 1.2) + yy * rng.uniform(-0.3, 0.3) + rng.uniform(0, 6.3))
        img = np.clip(np.round(img + rng.normal(0, 3, (channels, size, size))), 0, 255)
        img[:, :, :size // 3] = 0
        mean = np.full((channels, size, size), 0.5)
        mean[:, :, :size // 3] = 0.0
        x.append(img.astype(np.uint8))
        m.append(mean)
    return x, m


def _net(channels: int, seed: int = 1) -> learned.LearnedPixels:
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(0, 0.5, s).astype(np.float16).astype(np.float64) for s in learned.shapes(channels)]
    return learned.LearnedPixels("gaussian", arrays)


def test_every_neighbour_lies_in_an_earlier_wave():
    """The decoder pops a whole group of bitsback.waves at once: a neighbour in the same group or a
    later one would be a pixel it does not have yet."""
    assert all(dx + 2 * dy < 0 for dy, dx in learned.NEIGHBOURS)


def test_a_groups_tables_read_no_pixel_of_its_own_group_or_later():
    """Scrambling every pixel of a group and of the groups after it leaves that group's tables as
    they were: what the decoder computes before popping the group is what the encoder coded with."""
    rng = np.random.default_rng(0)
    net = _net(3)
    x = rng.integers(0, 256, (3, 9, 11), np.uint8)
    x[:, ::3] = 0
    m = rng.uniform(0, 1, x.shape)
    groups = bitsback.waves(9, 11)
    for t, (rows, cols) in enumerate(groups):
        scrambled = x.copy()
        for r, c in groups[t:]:
            scrambled[:, r, c] = rng.integers(0, 256, (3, len(r)), np.uint8)
        np.testing.assert_array_equal(net.tables(x, m, rows, cols), net.tables(scrambled, m, rows, cols))


def test_the_distribution_is_one_over_all_256_levels():
    rng = np.random.default_rng(0)
    out = rng.normal(0, 3, (500, 4))
    p = learned.distribution(out, rng.uniform(-0.2, 1.2, 500))
    assert p.shape == (500, 256) and (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)


@pytest.mark.slow  # trains a network
@pytest.mark.parametrize("channels", [1, 3])
def test_a_trained_network_codes_every_pixel_back_and_its_json_codes_the_same(quick, channels):
    """Trained on stripes, pushed and popped through the bits-back pixel coder: every image exact,
    the header's copy gives the very same tables, and it codes held-out stripes in fewer bits than
    the context model fitted to the same images."""
    x, m = _stripes(24, channels=channels)
    pairs = np.arange(16 * 16 * 16)  # the first 16 images, every pixel
    arrays = learned_fit._train(*learned_fit._sample(x[:16], m[:16], pairs), channels)
    net = learned.LearnedPixels("gaussian", arrays)
    copy = learned.from_json(json.loads(json.dumps(net.to_json())), "gaussian", channels)
    assert isinstance(copy, learned.LearnedPixels)
    rows, cols = (a.ravel() for a in np.mgrid[:16, :16])
    for xi, mi in zip(x[16:], m[16:]):
        np.testing.assert_array_equal(net.tables(xi, mi, rows, cols), copy.tables(xi, mi, rows, cols))
        coder = tables.ans(bitsback.initial_words(4))
        bitsback.push_pixels(coder, xi, mi, net)
        np.testing.assert_array_equal(bitsback.pop_pixels(coder, mi, xi.shape, net), xi)
    context = fitted.fit("gaussian", x[:16], m[:16])
    held = np.arange(16 * 256, 24 * 256)
    assert learned_fit._bits(net, x, m, held) < learned_fit._bits(context, x, m, held)


def test_the_choice_keeps_the_context_model_for_small_archives_and_on_onnxruntime(quick, monkeypatch):
    """A network's header (~4 kB) would outweigh what it saves on a small archive, and the
    onnxruntime engine never imports torch to train one: both keep the context model, untrained."""
    x, m = _stripes(20)
    trained = []
    monkeypatch.setattr(learned_fit, "_train", lambda *a: trained.append(1))
    assert isinstance(learned_fit.choose("gaussian", x, m, learned.MIN_ARCHIVE - 1), fitted.PixelModel)
    assert isinstance(learned_fit.choose("gaussian", x, m, 10 ** 9, torch=False), fitted.PixelModel)
    assert not trained


@pytest.mark.slow  # trains a network
def test_the_choice_weighs_the_headers_bytes_against_the_bits_saved(quick, monkeypatch):
    """On stripes the network codes smaller: it is chosen for a large archive, and the context
    model where the archive is too small for the saving to pay the network's longer header."""
    monkeypatch.setattr(learned, "MIN_ARCHIVE", 0)
    monkeypatch.setattr(learned, "HELD_OUT", 2048)
    x, m = _stripes(64)
    assert isinstance(learned_fit.choose("gaussian", x, m, 10 ** 9), learned.LearnedPixels)
    assert isinstance(learned_fit.choose("gaussian", x, m, 1000), fitted.PixelModel)


@pytest.mark.parametrize("edit, message", [
    (lambda j: j.update(float16=j["float16"][:-8]), "not the 1-channel network's"),
    (lambda j: j.update(float16="!!" + j["float16"][2:]), "not base64"),
    (lambda j: j.update(float16=__import__("base64").b64encode(b"\x00\x7c" * (len(
        __import__("base64").b64decode(j["float16"])) // 2)).decode()), "not finite"),
    (lambda j: j.update(hidden=learned.HIDDEN + 1), "not of this version's shape"),
    (lambda j: j.update(kind="learned-9"), "unknown kind"),
])
def test_a_damaged_learned_model_in_a_header_is_named(edit, message):
    meta = _net(1).to_json()
    edit(meta)
    with pytest.raises(ValueError, match=message):
        learned.from_json(meta, "gaussian", 1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(run, folder, archive): an untrained 16 px grey Gaussian model and 40 stripe images, archived
    with the learned model (the size rule lowered, the training shortened, for the test)."""
    import vaekit
    from export_support import random_run

    root = tmp_path_factory.mktemp("learned")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = root / "src"
    src.mkdir()
    for i, xi in enumerate(_stripes(40)[0]):
        Image.fromarray(xi[0]).save(src / f"s{i:02d}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(learned, "STEPS", 300)
        mp.setattr(learned, "BATCH", 256)
        mp.setattr(learned, "MIN_ARCHIVE", 0)
        mp.setattr(learned_fit, "choose", lambda lk, x, m, n, torch: learned.LearnedPixels(
            lk, learned_fit._train(*learned_fit._sample(x, m, np.arange(len(x) * 256)), 1)))
        report = vaekit.codec.encode(vaekit.load(run), src, root / "a.vkc", lossless=True)
    assert report.pixel_model == "learned"  # what `encode --json` prints as "pixel_model"
    return run, src, root / "a.vkc"


@pytest.mark.slow  # trains a network
def test_an_archive_with_the_learned_model_decodes_through_the_cli(archive, tmp_path):
    from vaekit_cli.codec import pixel_model_text
    from vaekit_cli.main import app

    assert "network" in pixel_model_text("gaussian", "learned") and "9-10%" not in pixel_model_text("gaussian", "learned")
    onnx = pixel_model_text("gaussian", "fitted", "onnxruntime")  # an export never fits the network (h2)
    assert "the run directory instead of its export may fit a small network" in onnx
    assert "run directory" not in pixel_model_text("gaussian", "fitted", "torch")

    run, src, vkc = archive
    h, _ = container.read_header(vkc)
    assert h.engine["pixels"]["kind"] == learned.KIND
    result = CliRunner().invoke(app, ["decode", str(run), str(vkc), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for f in sorted(src.iterdir()):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f.name)), np.asarray(Image.open(f)))


@pytest.mark.slow  # trains a network
def test_a_forged_learned_model_is_a_damaged_archive_exit_2(archive, tmp_path):
    """A header whose network has the wrong number of bytes (its checksum recomputed, as anyone can):
    one line, exit 2, nothing written."""
    from test_hostile16 import _rewritten
    from vaekit_cli.main import app

    run, _, vkc = archive

    def edit(h):
        h.engine["pixels"]["float16"] = h.engine["pixels"]["float16"][:-4]

    crafted = _rewritten(vkc, tmp_path / "crafted.vkc", edit)
    result = CliRunner().invoke(app, ["decode", str(run), str(crafted), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "damaged or foreign" in result.output and "learned pixel model" in result.output
    assert not (tmp_path / "out").exists()


def test_an_archive_is_sized_by_the_images_it_takes_not_the_files_it_skips(quick, tmp_path, monkeypatch):
    """The choice weighs the network's header against the archive's expected size: 20 images of the
    model's size among 220 files are an archive of 20, too small to try a network for (the size
    rule and the sample's floor lowered for the test, so that only the expected size decides)."""
    import vaekit
    from export_support import random_run

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = tmp_path / "src"
    src.mkdir()
    for i, xi in enumerate(_stripes(220)[0]):
        Image.fromarray(xi[0] if i < 20 else np.tile(xi[0], (2, 2))).save(src / f"s{i:03d}.png")
    monkeypatch.setattr(learned, "MIN_ARCHIVE", 21 * 256)
    monkeypatch.setattr(learned, "MIN_HELD", 100)
    trained = []
    monkeypatch.setattr(learned_fit, "_train", lambda *a: trained.append(1) or 1 / 0)
    report = vaekit.codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", lossless=True)
    assert report.count == 20 and len(report.skipped) == 200
    assert report.pixel_model == "fitted" and not trained


def test_a_lossless_encode_reports_the_fit_and_the_coding_after_the_reading(tmp_path):
    """The reading reaches 100% before the pixel model is fitted and the images coded (20-60 s on
    real folders): progress hears phase "fit" around the fit and phase "code" around the coding,
    in that order, so a front end shows what it waits for."""
    import vaekit
    from export_support import random_run

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = tmp_path / "src"
    src.mkdir()
    for i, xi in enumerate(_stripes(12)[0]):
        Image.fromarray(xi[0]).save(src / f"s{i:03d}.png")
    calls = []
    report = vaekit.codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", lossless=True,
                                 progress=lambda done, total, phase="", **_: calls.append((phase, done, total)))
    assert report.count == 12
    phases = [c[0] for c in calls]
    assert calls[phases.index("")] == ("", 1, 12) and ("", 12, 12) in calls
    assert phases.index("fit") > max(i for i, p in enumerate(phases) if p == "")  # after the reading
    assert [c for c in calls if c[0] == "fit"] == [("fit", 0, 1), ("fit", 1, 1)]
    assert [c for c in calls if c[0] == "code"] == [("code", 0, None), ("code", 12, None)]
    assert phases.index("code") > max(i for i, p in enumerate(phases) if p == "fit")


def test_training_the_network_leaves_the_callers_random_stream_alone_and_repeats(quick):
    """A library call must not move the user's torch random stream (nor reseed a GPU's): the
    network's initial weights and batches come from their own seeded generators, so two fits of
    the same sample are the same network."""
    import torch

    rng = np.random.default_rng(0)
    f, mean, level = rng.normal(size=(4000, learned.width(1))), np.full(4000, 0.5), rng.integers(0, 256, 4000)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = learned_fit._train(f, mean, level, 1)
    assert torch.equal(torch.rand(3), expected)
    second = learned_fit._train(f, mean, level, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_the_pixel_model_is_fitted_to_the_means_bits_back_codes_with(tmp_path, monkeypatch):
    """Bits-back codes each image's pixels with the decoder's mean at a posterior draw, not at its
    mean; the pixel model is fitted to such draws' means (seeded: one folder, one archive), which
    differ from the posterior mean's wherever the posterior has any spread."""
    import vaekit
    from export_support import random_run
    from vaekit.codec.fitted import means
    from vaekit.codec.net import Net

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = tmp_path / "src"
    src.mkdir()
    x = _stripes(3)[0]
    for i, xi in enumerate(x):
        Image.fromarray(xi[0]).save(src / f"s{i}.png")
    seen = []
    choose = learned_fit.choose
    monkeypatch.setattr(learned_fit, "choose", lambda lk, imgs, m, n, torch: seen.append(m) or choose(lk, imgs, m, n, torch))
    model = vaekit.load(run)
    for k in range(2):
        vaekit.codec.encode(model, src, tmp_path / f"a{k}.vkc", lossless=True)
    assert (tmp_path / "a0.vkc").read_bytes() == (tmp_path / "a1.vkc").read_bytes()
    net, rng = Net(model), np.random.default_rng(0)
    for xi, m in zip(x, seen[0]):
        np.testing.assert_array_equal(m, net.sampled_mean_image(xi, rng))
        assert np.abs(m - means("gaussian", net.likelihood(net.posterior(xi)[0]))).max() > 1e-4
