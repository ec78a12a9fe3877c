"""The defect reader (vaekit/reader): its synthetic defects, network shapes, VAE features, and
that training on the synthetic defects finds an obvious defect it never saw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.model.vae import ConvVAE
from vaekit.reader.features import tiled, vae_features
from vaekit.reader.net import ReaderConfig, ReaderEnsemble, ReaderNet
from vaekit.reader.synth import SHAPES, _stroke, make_defects
from vaekit.reader.train import load_reader, read, train_reader


def _surface(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Mid-grey noisy 'surfaces' (N, C, size, size) uint8, away from 0 and 255 so every fill shows."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 12, (n, channels, size, size)) + 20 * np.sin(np.arange(size) / 3)[None, None, None]
    return np.clip(base, 60, 200).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_masks_are_exactly_where_the_pixels_changed(channels):
    x = _surface(40, 48, channels)
    bad, masks = make_defects(x, np.random.default_rng(1))
    assert bad.shape == x.shape and bad.dtype == np.uint8
    assert masks.shape == (40, 48, 48) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    changed = np.abs(bad.astype(int) - x).max(1) > 0  # (N, H, W)
    assert not (changed & (masks == 0)).any()  # nothing outside a mask moved
    assert (masks.reshape(40, -1).sum(1) >= 2).all()  # every image got a defect
    inside = np.abs(bad.astype(int) - x).max(1)[masks > 0]
    assert inside.mean() > 6 and (inside > 0).mean() > 0.8  # and the defect is visible


def test_synthetic_defects_repeat_with_the_seed_and_differ_without_it():
    x = _surface(8)
    a, ma = make_defects(x, np.random.default_rng(5))
    b, mb = make_defects(x, np.random.default_rng(5))
    c, mc = make_defects(x, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(ma, mc)


def test_leaving_out_the_line_family_leaves_no_thin_defects():
    from scipy.ndimage import binary_erosion

    x = _surface(60, 64)
    _, lines = make_defects(x, np.random.default_rng(2), shapes=("line",))
    _, blobs = make_defects(x, np.random.default_rng(2), shapes=tuple(s for s in SHAPES if s != "line"))
    core = lambda m: binary_erosion(m > 0, np.ones((1, 5, 5))).reshape(len(m), -1).any(1)  # noqa: E731
    assert core(lines).mean() < 0.1  # a line is at most ~3 px wide: a 5x5 erosion removes it
    assert core(blobs).mean() > 0.3


def _stroke_point_by_point(pts, h, w, radius):
    """The pen as a plain loop over the path's points (what _stroke computes in chunks)."""
    out = np.zeros((h, w))
    r = int(np.ceil(radius + 1))
    for py, px in pts:
        y0, y1, x0, x1 = max(0, int(py) - r), min(h, int(py) + r + 2), max(0, int(px) - r), min(w, int(px) + r + 2)
        if y0 < y1 and x0 < x1:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], np.clip(radius + 0.5 - np.hypot(yy - py, xx - px), 0, 1))
    return out


def test_a_stroke_inks_exactly_what_a_point_by_point_pen_would():
    rng = np.random.default_rng(5)
    for h, w in ((64, 64), (37, 90)):
        for _ in range(20):  # paths that start inside and wander out of the image on any side
            pts = np.cumsum(rng.normal(0, 0.4, (int(rng.integers(1, 200)), 2)), 0) + rng.uniform(-5, [h + 5, w + 5])
            radius = rng.uniform(0.5, 1.6)
            assert np.array_equal(_stroke(pts, h, w, radius), _stroke_point_by_point(pts, h, w, radius))


def test_make_defects_names_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        make_defects(np.zeros((2, 1, 8, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        make_defects(_surface(2), np.random.default_rng(0), shapes=("square",))


@pytest.mark.parametrize("size", [(37, 51), (5, 9), (64, 64)])
def test_the_network_maps_any_size_to_a_logit_per_pixel(size):
    net = ReaderNet(4, ReaderConfig(width=4, depth=2)).eval()
    assert net(torch.rand(2, 4, *size)).shape == (2, *size)
    with pytest.raises(ValueError, match="expected"):
        net(torch.rand(2, 3, *size))


def test_vae_features_give_the_reconstruction_and_a_nonnegative_residual():
    torch.manual_seed(0)
    vae = ConvVAE(ModelConfig(image_size=16, channels=3, latent_dim=4, layout="grid", likelihood="gaussian"))
    f = vae_features(vae, ("recon", "r", "kl"))(torch.rand(2, 3, 16, 16))
    assert f.shape == (2, 5, 16, 16)
    assert (f[:, 3:] >= 0).all() and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="grid"):
        vae_features(ConvVAE(ModelConfig(image_size=16, layout="vector")), ("kl",))


def test_tiling_a_fixed_size_feature_covers_any_larger_image_exactly():
    def fn(x):  # a 'VAE' that only takes 16 x 16 tiles, pointwise so the answer is known
        assert x.shape[-2:] == (16, 16)
        return 2 * x

    x = torch.rand(2, 1, 41, 23)
    torch.testing.assert_close(tiled(fn, 16)(x), 2 * x)
    with pytest.raises(ValueError, match="smaller than the tile"):
        tiled(fn, 16)(torch.rand(1, 1, 8, 40))


def _local_residual(x):  # a stand-in for the VAE's residual: distance from the local mean
    return (x - torch.nn.functional.avg_pool2d(x, 7, 1, 3, count_include_pad=False)).abs()


@pytest.mark.slow
@pytest.mark.parametrize("features", [None, _local_residual])
def test_a_reader_trained_on_synthetic_defects_finds_a_defect_it_never_saw(features):
    """A dark 6x6 square (not a shape the generator draws) on held-out surfaces: the image
    scores separate, and the map is higher on the square than off it."""
    cfg = ReaderConfig(width=8, depth=2, steps=300, batch=8, crop=32, lr=3e-3, members=1)
    state = train_reader(_surface(64, 32, seed=1), features, cfg, seed=0)
    net = load_reader(state, cfg)
    clean = _surface(20, 32, seed=2)
    bad = clean.copy()
    bad[:, :, 12:18, 14:20] = 40
    scores, maps = read(net, np.concatenate([clean, bad]), features)
    assert maps.shape == (40, 32, 32)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([0] * 20 + [1] * 20, scores) > 0.9
    square = np.zeros((32, 32), bool)
    square[12:18, 14:20] = True
    assert roc_auc_score(np.broadcast_to(square, (20, 32, 32)).ravel(), maps[20:].ravel()) > 0.9  # pixel AUROC


def test_training_stops_when_asked_and_reports_progress():
    seen = []
    cfg = ReaderConfig(width=4, depth=1, steps=100, batch=2, crop=16, members=3)
    state = train_reader(_surface(4, 16), lambda x: x, cfg, progress=lambda d, t, **m: seen.append((d, t)),
                         should_stop=lambda: len(seen) >= 1)
    assert seen == [(25, 300)]  # steps counted over the three members
    assert load_reader(state, cfg)(torch.rand(1, 2, 16, 16)).shape == (1, 16, 16)


def test_an_ensemble_reads_the_median_probability_of_its_members():
    torch.manual_seed(0)
    cfg = ReaderConfig(width=4, depth=1)
    nets = [ReaderNet(1, cfg).eval() for _ in range(3)]
    for i, net in enumerate(nets):  # members that disagree: shift each one's logits
        net.head.bias.data += 3.0 * (i - 1)
    x = torch.rand(2, 1, 20, 24)
    with torch.no_grad():
        got = torch.sigmoid(ReaderEnsemble(nets)(x))
        each = torch.stack([torch.sigmoid(n(x)) for n in nets])
        two = ReaderEnsemble(nets[:2])(x)
        one = ReaderEnsemble(nets[2:])(x)
        want_two = 0.5 * (nets[0](x) + nets[1](x))
        want_one = nets[2](x)
    torch.testing.assert_close(got, each.median(0).values, atol=1e-6, rtol=1e-5)  # the middle one, here net 1
    torch.testing.assert_close(got, each[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(two, want_two, atol=1e-6, rtol=1e-5)  # even: the middle two logits' mean
    assert torch.equal(one, want_one)  # one member: its own logits, however confident


def test_members_are_trained_from_different_seeds_and_the_whole_reader_repeats():
    cfg = ReaderConfig(width=4, depth=1, steps=5, batch=2, crop=16, members=2)
    a = train_reader(_surface(4, 16), None, cfg, seed=3)
    b = train_reader(_surface(4, 16), None, cfg, seed=3)
    assert {k.split(".")[1] for k in a} == {"0", "1"}
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    w = "down.0.body.0.weight"
    assert not torch.equal(a[f"members.0.{w}"], a[f"members.1.{w}"])
    assert len(load_reader(a, dataclasses.replace(cfg, members=3)).members) == 2  # the weights say how many


def test_a_reader_saved_as_one_net_still_loads_and_reads_the_same():
    # the first 0.3 runs stored one bare ReaderNet's state_dict in reader.safetensors
    torch.manual_seed(1)
    cfg = ReaderConfig(width=4, depth=1)
    net = ReaderNet(1, cfg).eval()
    loaded = load_reader({k: v.clone() for k, v in net.state_dict().items()}, cfg)
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 24, 24), dtype=np.uint8)
    net.head.bias.data -= 30.0  # a confident net (p ~ 1e-13): a probability clamp would show here
    loaded.members[0].head.bias.data -= 30.0
    s0, m0 = read(net, x)
    s1, m1 = read(loaded, x)
    np.testing.assert_array_equal(s1, s0)
    np.testing.assert_array_equal(m1, m0)


def test_read_without_smoothing_gives_the_networks_own_probabilities():
    cfg = ReaderConfig(width=4, depth=1)
    net = ReaderNet(1, cfg).eval()
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 20, 24), dtype=np.uint8)
    scores, maps = read(net, x, smooth=1, map_smooth=1)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(x.astype(np.float32) / 255))).numpy()
    np.testing.assert_allclose(maps, p, rtol=1e-5)
    np.testing.assert_allclose(scores, p.reshape(3, -1).max(1), rtol=1e-5)
    smoothed_scores, smoothed = read(net, x)  # the defaults: box means, never above the raw maximum
    assert smoothed.shape == (3, 20, 24) and (smoothed_scores <= scores + 1e-6).all()


@pytest.mark.parametrize("bad", [{"width": 0}, {"loss": "mse"}, {"shapes": ("square",)}, {"clean_fraction": 1.0},
                                 {"batch": 1}, {"steps": 2.5}, {"members": 0}])
def test_reader_config_names_a_bad_value(bad):
    from vaekit.errors import BadInput

    with pytest.raises(BadInput, match=next(iter(bad))):
        ReaderConfig(**bad)


def test_reading_in_tiles_matches_reading_whole_images_away_from_tile_seams():
    torch.manual_seed(0)
    net = ReaderNet(1, ReaderConfig(width=4, depth=1)).eval()
    with torch.no_grad():
        net.head.weight *= 100  # probabilities spread over (0, 1), so a misplaced tile shows
    x = np.random.default_rng(1).integers(0, 256, (2, 1, 70, 90), dtype=np.uint8)
    whole = read(net, x, smooth=1, map_smooth=1)[1]
    tiles = read(net, x, smooth=1, map_smooth=1, tile=48)[1]
    assert tiles.shape == whole.shape and whole.std() > 0.05
    shifted = np.abs(np.roll(whole, 1, axis=2) - whole).mean()  # what a tile one pixel off would cost
    assert np.abs(tiles - whole).mean() < 0.2 * shifted  # only near the seams do they differ, and little


@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_box_mean_is_the_mean_over_the_window_clipped_to_the_image(w):
    from vaekit.reader.score import box_mean

    m = np.random.default_rng(0).random((2, 6, 9))
    lo, hi = w // 2, w - 1 - w // 2
    want = np.array([[[m[n, max(0, y - lo):y + hi + 1, max(0, x - lo):x + hi + 1].mean() for x in range(9)]
                      for y in range(6)] for n in range(2)])
    np.testing.assert_allclose(box_mean(m, w), want, rtol=1e-12)


def test_the_reader_score_maths_runs_without_torch():
    """An ONNX engine must turn the exported reader's logits into maps and scores with torch absent."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from vaekit.reader.score import maps_and_scores\n"
            "s, m = maps_and_scores(np.zeros((2, 8, 8)), 3, 5)\n"
            "assert m.shape == (2, 8, 8) and np.allclose(s, 0.5)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_the_reader_exports_to_onnx_with_any_height_and_width(tmp_path):
    """Exported once at 32 px, the graph must still pad, unshuffle and crop at other sizes."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    cfg = ReaderConfig(width=4, depth=2)
    net = ReaderEnsemble([ReaderNet(3, cfg) for _ in range(3)]).eval()  # what a run's reader is
    dims = {0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", min=8, max=1024),
            3: torch.export.Dim("w", min=8, max=1024)}
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(tmp_path / "reader.onnx"), dynamo=True,
                      dynamic_shapes={"x": dims})
    sess = ort.InferenceSession(str(tmp_path / "reader.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 32, 32), (1, 3, 37, 50)]:
        x = torch.rand(*shape)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)


def test_the_numpy_tiling_both_engines_read_with_blends_windows_into_the_whole_images_logits():
    # vaekit.reader.score.read_tiled is what the torch engine and an exported reader both use
    from vaekit.reader.score import read_tiled

    torch.manual_seed(0)
    point = torch.nn.Conv2d(2, 1, 1).eval()  # no context: any windows, blended, give the whole image's logits
    conv = torch.nn.Conv2d(2, 1, 5, padding=2).eval()  # 2 px of context, less than any overlap used here
    x = torch.rand(2, 2, 45, 70)
    with torch.no_grad():
        for net in (point, conv):
            whole = net(x)[:, 0].numpy()
            got = read_tiled(lambda v: net(torch.from_numpy(v))[:, 0].numpy(), x.numpy(), 16)
            assert got.shape == (2, 45, 70)
            if net is point:
                np.testing.assert_allclose(got, whole, atol=1e-6)
            else:  # window edges are zero-padded; the tent weight makes them count little
                assert np.abs(got - whole).mean() < 0.15 * np.abs(whole).mean()
            fits = read_tiled(lambda v: net(torch.from_numpy(v))[:, 0].numpy(), x.numpy(), 70)  # one window
            np.testing.assert_allclose(fits, whole, atol=1e-6)


@pytest.mark.parametrize("h, w", [(45, 70), (1, 300), (300, 17), (64, 64)])
def test_tiled_reading_bounds_each_call_and_never_depends_on_the_batch(h, w, monkeypatch):
    """Each network call gets at most READ_PIXELS pixels (one window at least), windows at most
    `tile` px a side that cover the image; and an image's logits are the same read alone or with
    others (the windows depend on its size only), so a score never depends on the batch."""
    import vaekit.reader.score as score

    monkeypatch.setattr(score, "READ_PIXELS", 600)
    calls = []

    def run(v):
        calls.append(v.shape)
        return v.sum(1) * 2.0 + v[:, 0].mean((1, 2))[:, None, None] ** 2  # per pixel, plus a per-window term

    x = np.random.default_rng(0).random((5, 3, h, w)).astype(np.float32)
    together = score.read_tiled(run, x, 16)
    assert together.shape == (5, h, w)
    assert all(c[2] <= (h if h <= 16 else 16) and c[3] <= (w if w <= 16 else 16) for c in calls)
    assert all(c[0] == 1 or c[0] * c[2] * c[3] <= 600 for c in calls)
    alone = np.concatenate([score.read_tiled(run, x[i:i + 1], 16) for i in range(5)])
    np.testing.assert_array_equal(together, alone)
