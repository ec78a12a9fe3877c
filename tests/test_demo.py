"""The web app: its handlers called directly, then the launched app driven over HTTP with gradio_client."""

from __future__ import annotations

import csv
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import built_once
import vaekit
from vaekit.inference.engine import score_unit
from vaekit import codes
from vaekit.codes.jobs import against_sources
from vaekit.images import quality
from vaekit import images as imageio
from vaekit_demo import handlers, training

SIZE = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """What write_digits(ROOT, size=SIZE) writes, this module's own copy (tests/built_once.py)."""
    return built_once.digits(tmp_path_factory, tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A tiny run on the digits (ModelConfig(image_size=SIZE, latent_dim=4, base_channels=8),
    TrainConfig(epochs=2, batch_size=32)): trained once per process, this module's own copy."""
    assert SIZE == built_once.DIGITS_SIZE
    return built_once.digits_run(tmp_path_factory, data, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def model(run):
    return vaekit.load(run)


@pytest.fixture(scope="module")
def uploads(data) -> list[Path]:
    """What a user uploads: two normal digits and one anomalous one."""
    normal = sorted((data / "test" / "normal").glob("*.png"))[:2]
    return [*normal, sorted((data / "test" / "anomalous").glob("*.png"))[0]]


@pytest.fixture()
def not_an_image(tmp_path) -> Path:
    p = tmp_path / "notes.png"
    p.write_text("this is text, not a PNG")
    return p


# --- handlers, called directly ---------------------------------------------------------------------

def test_describe_names_the_model_and_its_threshold(model, run):
    text = handlers.describe(model)
    assert f"`{run.name}`" in text and str(run.parent) not in text and "torch engine" in text  # no server folders
    assert f"`{run.parent.name}/{run.name}`" in handlers.describe(model, [run.parent.parent]) and f"{SIZE}×{SIZE} gray" in text
    assert f"{model.info.threshold:.2f} {score_unit(model.info.score)}" in text
    assert "No model open" in handlers.describe(None)


def test_every_tab_needs_a_model_and_says_so(tmp_path, uploads):
    with pytest.raises(handlers.NoModelError, match="no model is open"):
        handlers.anomaly(None, uploads, 1.0, tmp_path)
    with pytest.raises(handlers.NoModelError):
        handlers.sample_grid(None, 4, 1.0, 0)


def test_compress_writes_a_code_file_that_decodes_to_the_shown_reconstructions(model, uploads, tmp_path):
    r = handlers.compress(model, uploads, tmp_path, "q8")
    assert r.names == [p.name for p in uploads]
    e = r.report
    assert e.path.is_file() and e.path.stat().st_size == e.file_bytes and e.count == 3
    assert e.bits_per_pixel == pytest.approx(8 * e.file_bytes / (3 * SIZE * SIZE))
    # each pair is input | reconstruction in one grid: (C, pad+H+pad, pad+W+pad+W+pad)
    assert [p.shape for p in r.pairs] == [(1, SIZE + 4, 2 * SIZE + 6)] * 3
    x = model.load_images(uploads).images
    shown = np.stack([p[:, 2 : 2 + SIZE, SIZE + 4 : 2 * SIZE + 4] for p in r.pairs])
    np.testing.assert_array_equal(np.stack([p[:, 2 : 2 + SIZE, 2 : 2 + SIZE] for p in r.pairs]), x)
    names, decoded = handlers.decompress(model, e.path)
    assert names == r.names
    np.testing.assert_array_equal(decoded, shown)  # the picture shown is exactly what the file decodes to
    np.testing.assert_allclose(r.psnr, quality.psnr(x, decoded))
    np.testing.assert_allclose(r.ssim, quality.ssim(x, decoded))


def _panels(shown: np.ndarray) -> list[np.ndarray]:
    """The three images of an input | .vkc | WebP row (make_grid, pad 2): (C, H, W) each."""
    return [shown[..., 2 : 2 + SIZE, 2 + k * (SIZE + 2) : 2 + k * (SIZE + 2) + SIZE] for k in range(3)]


def _check_vkc_image(model, x, name, vkc_bytes, psnr, webp_quality, webp_bytes, webp_psnr, decoded, webp_decoded,
                     file, tmp_path):
    """One image's .vkc and WebP numbers agree with a recomputation from the files themselves."""
    from vaekit import codec

    assert vkc_bytes > 0 and Path(file).stat().st_size == vkc_bytes and Path(file).name == Path(name).stem + ".vkc"
    again = codec.decode(model, file, tmp_path / f"again-{Path(name).stem}")  # the download decodes to what is shown
    np.testing.assert_array_equal(imageio.decode(again.written[0], 1).transpose(2, 0, 1), decoded)
    assert psnr == pytest.approx(quality.psnr(x[None], decoded[None])[0], abs=0.006)
    sizes = [codec.pillow_file(x, "WebP", q)[0] for q in range(101)]
    assert webp_bytes == sizes[webp_quality]  # the file that quality writes ...
    assert abs(webp_bytes - vkc_bytes) == min(abs(s - vkc_bytes) for s in sizes)  # ... and none is closer in size
    np.testing.assert_array_equal(codec.pillow_file(x, "WebP", webp_quality)[1], webp_decoded)
    assert webp_psnr == pytest.approx(quality.psnr(x[None], webp_decoded[None])[0], abs=0.006)


def test_encode_vkc_codes_each_upload_beside_webp_at_the_same_size(model, uploads, tmp_path, not_an_image):
    shown, skipped = handlers.encode_vkc(model, [*uploads, not_an_image], tmp_path, 6.0)  # a slider's float
    assert [v.name for v in shown] == [p.name for p in uploads] and [p.name for p, _ in skipped] == ["notes.png"]
    x = model.load_images(uploads).images
    for v, xi in zip(shown, x):
        inp, dec, webp = _panels(v.shown)
        np.testing.assert_array_equal(inp, xi)
        np.testing.assert_array_equal(webp, v.webp.decoded)
        assert v.bits_per_pixel == pytest.approx(8 * v.bytes / SIZE**2)
        assert v.ssim == pytest.approx(quality.ssim(xi[None], dec[None])[0])
        assert v.webp_ssim == pytest.approx(quality.ssim(xi[None], webp[None])[0])
        _check_vkc_image(model, xi, v.name, v.bytes, v.psnr, v.webp.quality, v.webp.bytes, v.webp.psnr, dec, webp,
                         v.file, tmp_path)
    small, _ = handlers.encode_vkc(model, uploads[:1], tmp_path, 1)
    assert small[0].bytes < shown[0].bytes  # quality 1: the smallest files
    with pytest.raises(ValueError, match="invalid quality 9"):
        handlers.encode_vkc(model, uploads, tmp_path, 9)
    with pytest.raises(handlers.NoModelError):
        handlers.encode_vkc(None, uploads, tmp_path, 6)


def test_decompress_refuses_garbage_and_another_models_codes(model, uploads, tmp_path, not_an_image):
    with pytest.raises(codes.CodeFileError, match="code file notes.png is corrupt, truncated or not a vaekit code file"):
        handlers.decompress(model, not_an_image)
    x = model.load_images(uploads).images
    cf = codes.encode_images(model, x, ["a.png", "b.png", "c.png"], np.full((3, 2), SIZE), "q8")
    cf.fingerprint = "0123456789abcdef"  # as if written by another model
    foreign = tmp_path / "foreign.codes"
    codes.save(cf, foreign)
    with pytest.raises(codes.FingerprintMismatch, match="encoded by model 0123456789abcdef"):
        handlers.decompress(model, foreign)


def test_anomaly_scores_judges_maps_and_writes_csv(model, uploads, tmp_path):
    x = model.load_images(uploads).images
    want = model.score(x, score=model.info.score)
    threshold = float(np.median(want.score))  # one image at, one below, one above
    r = handlers.anomaly(model, uploads, threshold, tmp_path)
    np.testing.assert_array_equal(r.scores, want.score)
    assert r.anomalous.tolist() == (want.score > threshold).tolist()
    assert r.anomalous.sum() == 1
    np.testing.assert_array_equal(r.overlays[1], imageio.heatmap_overlay(x[1], want.pixel_map[1]))
    assert [o.shape for o in r.overlays] == [(3, SIZE, SIZE)] * 3
    rows = list(csv.DictReader(r.csv.open()))
    assert [row["path"] for row in rows] == [p.name for p in uploads]  # names, not the server's temp paths
    assert [float(row["score"]) for row in rows] == want.score.tolist()
    assert [row["anomalous"] for row in rows] == ["true" if a else "false" for a in r.anomalous]
    assert {float(row["threshold"]) for row in rows} == {threshold}
    assert [row[3] for row in r.table()] == ["anomalous" if a else "normal" for a in r.anomalous]


def test_anomaly_skips_a_bad_upload_and_refuses_only_bad_ones(model, uploads, not_an_image, tmp_path):
    r = handlers.anomaly(model, [uploads[0], not_an_image], 1e9, tmp_path)
    assert r.names == [uploads[0].name] and [p.name for p, _ in r.skipped] == ["notes.png"]
    with pytest.raises(imageio.NoImagesError, match="no usable image among the uploads .1 skipped: notes.png: "):
        handlers.anomaly(model, [not_an_image], 1e9, tmp_path)
    with pytest.raises(ValueError, match="invalid threshold nan"):
        handlers.anomaly(model, uploads, float("nan"), tmp_path)


def test_sample_grid_is_seeded(model):
    a, b, c = (handlers.sample_grid(model, 9, 1.0, s) for s in (0, 0, 1))
    assert a.shape == (1, 3 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a, imageio.make_grid(imageio.to_uint8(model.sample(9, 1.0, 0)), ncol=3))


def test_interpolation_strip_runs_between_the_two_reconstructions(model, uploads):
    strip = handlers.interpolation_strip(model, uploads[0], uploads[2], 5)
    assert strip.shape == (1, SIZE + 4, 5 * (SIZE + 2) + 2)
    recon = imageio.to_uint8(model.reconstruct(model.load_images([uploads[0], uploads[2]]).images))
    np.testing.assert_array_equal(strip[:, 2 : 2 + SIZE, 2 : 2 + SIZE], recon[0])
    np.testing.assert_array_equal(strip[:, 2 : 2 + SIZE, -SIZE - 2 : -2], recon[1])
    with pytest.raises(ValueError, match="needs two images"):
        handlers.interpolation_strip(model, uploads[0], None, 5)


def test_latent_map_projects_codes_and_picks_by_range(model, data):
    from sklearn.decomposition import PCA

    m = handlers.latent_map(model, data / "test", "PCA", limit=30)
    assert 15 <= len(m.names) <= 30 and m.xy.shape == (len(m.names), 2)
    assert all(not Path(n).is_absolute() for n in m.names) and m.names[0].startswith(("anomalous/", "normal/"))
    x = model.load_images(m.paths).images
    np.testing.assert_allclose(m.xy, PCA(2, random_state=0).fit_transform(model.encode(x)[0]), atol=1e-5)
    np.testing.assert_array_equal(m.scores, model.score(x, score=model.info.score).score)
    lo, hi = np.quantile(m.xy[:, 0], [0.25, 0.75])
    picked = handlers.latent_pick(model, m, hi, lo)  # a brush dragged right to left gives (hi, lo)
    inside = [i for i in range(len(m.names)) if lo <= m.xy[i, 0] <= hi]
    inside.sort(key=lambda i: abs(m.xy[i, 0] - (lo + hi) / 2))
    assert [c for _, c in picked] == [f"{m.names[i]} · {m.scores[i]:.1f}" for i in inside[: handlers.LATENT_MAX_SHOWN]]
    np.testing.assert_array_equal(picked[0][0], x[inside[0]])
    assert handlers.latent_pick(model, m, 1e6, 2e6) == []
    with pytest.raises(FileNotFoundError, match="no such folder"):
        handlers.latent_map(model, data / "missing", "PCA")


@pytest.mark.slow
def test_train_events_stream_epochs_then_the_result(data, tmp_path):
    events = list(training.train_events(data / "train", tmp_path / "run", SIZE, 3, 2, threading.Event()))
    assert [e.metrics["epoch"] for e in events if e.phase == "epoch"] == [1, 2]
    assert {e.phase for e in events[:-1]} <= {"decode", "plan", "train", "epoch", "crossfit"} and events[-1].phase == "done"
    plans = [e for e in events if e.phase == "plan"]  # once, before the first step, every "auto" decided
    assert len(plans) == 1 and events.index(plans[0]) < [e.phase for e in events].index("train")
    assert plans[0].metrics["latent_dim"] == 3 and plans[0].metrics["epochs"] == 2 and plans[0].metrics["image_size"] == SIZE
    assert events[-1].result.run_dir == tmp_path / "run"
    assert vaekit.load(tmp_path / "run").info.latent_dim == 3


@pytest.mark.slow
def test_stop_ends_training_and_keeps_the_checkpoint(data, tmp_path):
    stop = threading.Event()
    phases = []
    for ev in training.train_events(data / "train", tmp_path / "run", SIZE, 3, 50, stop):
        phases.append(ev.phase)
        if ev.phase == "epoch":
            stop.set()  # what the Stop button does
    assert phases[-1] == "stopped" and phases.count("epoch") == 1
    assert (tmp_path / "run" / "checkpoint" / "resume.json").is_file()
    from vaekit.training import metrics

    assert metrics.read_metrics(tmp_path / "run")[-1]["epoch"] == 1


def test_train_with_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        next(training.train_events(tmp_path / "nope", tmp_path / "run", SIZE, 3, 1, threading.Event()))


@pytest.mark.slow
def test_every_tab_but_train_works_on_the_onnx_engine(tmp_path_factory, tmp_path):
    from export_support import exported  # the session's one export, shared with the export tests

    from vaekit_demo.app import build_app

    ex = exported(tmp_path_factory)
    onnx, torch_model = vaekit.load(ex.onnx), vaekit.load(ex.run)
    ups = sorted((ex.digits / "test" / "normal").glob("*.png"))[:2] + sorted((ex.digits / "test" / "anomalous").glob("*.png"))[:1]
    assert "onnxruntime engine" in handlers.describe(onnx)
    build_app(onnx, runs_dir=tmp_path / "runs")  # the app builds on it, threshold slider and all
    a = handlers.anomaly(onnx, ups, torch_model.info.threshold, tmp_path)
    t = handlers.anomaly(torch_model, ups, torch_model.info.threshold, tmp_path)
    # atol: the default score is in standard deviations and can sit near 0, where rtol alone means nothing
    np.testing.assert_allclose(a.scores, t.scores, rtol=1e-4, atol=1e-4)
    assert a.anomalous.tolist() == t.anomalous.tolist()
    c = handlers.compress(onnx, ups, tmp_path)
    _, by_torch = handlers.decompress(torch_model, c.report.path)  # same weights, same fingerprint: either decodes
    _, by_onnx = handlers.decompress(onnx, c.report.path)
    assert np.abs(by_torch.astype(int) - by_onnx.astype(int)).max() <= 1
    grids = [handlers.sample_grid(m, 4, 1.0, 0).astype(int) for m in (onnx, torch_model)]
    assert np.abs(grids[0] - grids[1]).max() <= 1
    assert handlers.interpolation_strip(onnx, ups[0], ups[1], 3).shape == (1, SIZE + 4, 3 * (SIZE + 2) + 2)
    maps = [handlers.latent_map(m, ex.digits / "test", "PCA", limit=20) for m in (onnx, torch_model)]
    np.testing.assert_allclose(maps[0].scores, maps[1].scores, rtol=1e-4, atol=1e-4)


# --- the launched app, over HTTP -------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(run, tmp_path_factory):
    from vaekit_demo.app import build_app, launch

    # every test folder lies under pytest's base folder: the app's data root
    app = build_app(run, runs_dir=tmp_path_factory.mktemp("app-runs"), data_root=tmp_path_factory.getbasetemp())
    _, url, _ = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(paths):
    from gradio_client import handle_file

    return [handle_file(str(p)) for p in paths]


@pytest.mark.slow
def test_app_listens_on_localhost_only_without_share(served):
    app, url = served
    assert url.startswith("http://127.0.0.1:") and app.server_name == "127.0.0.1" and not app.share


@pytest.mark.slow
def test_client_compress_then_decompress(client, model, uploads):
    from gradio_client import handle_file

    gallery, summary, code_path, table = client.predict(_files(uploads), "q8", api_name="/compress")
    assert [g["caption"] for g in gallery] == [p.name for p in uploads]
    cf = codes.load(code_path)
    assert f"{Path(code_path).stat().st_size} bytes" in summary and cf.names == [p.name for p in uploads]
    sources, written = sum(p.stat().st_size for p in uploads), Path(code_path).stat().st_size
    assert f"{sources} bytes: {against_sources(sources, written)})" in summary  # h2, 2026-12-07: "larger" went unsaid
    assert [row[0] for row in table["data"]] == [p.name for p in uploads]
    # the PNG the page shows holds the exact pixels (no lossy WebP): right half = decoded codes
    pair = np.asarray(Image.open(gallery[0]["image"]))
    decoded = imageio.to_uint8(model.decode(cf.latents()))
    np.testing.assert_array_equal(pair[2 : 2 + SIZE, SIZE + 4 : 2 * SIZE + 4], decoded[0, 0])
    out = client.predict(handle_file(code_path), api_name="/decompress")
    assert [g["caption"] for g in out] == [p.name for p in uploads]
    np.testing.assert_array_equal(np.asarray(Image.open(out[2]["image"])), decoded[2, 0])


@pytest.mark.slow
def test_client_encode_vkc_beside_webp_at_the_same_size(client, model, uploads, tmp_path):
    gallery, summary, files, table = client.predict(_files(uploads), 6, api_name="/encode_vkc")
    assert table["headers"] == handlers.VKC_COLUMNS and [row[0] for row in table["data"]] == [p.name for p in uploads]
    assert [g["caption"].split(":")[0] for g in gallery] == [p.name for p in uploads] and len(files) == 3
    x = model.load_images(uploads).images
    for xi, row, g, f in zip(x, table["data"], gallery, files):
        name, vkc_bytes, bpp, psnr, ssim, webp_q, webp_bytes, webp_psnr, webp_ssim = row
        assert bpp == pytest.approx(8 * vkc_bytes / SIZE**2, abs=1e-3)
        _, dec, webp = _panels(np.asarray(Image.open(g["image"]))[None])  # the PNG shown holds the exact pixels
        assert ssim == pytest.approx(quality.ssim(xi[None], dec[None])[0], abs=1e-4)
        assert webp_ssim == pytest.approx(quality.ssim(xi[None], webp[None])[0], abs=1e-4)
        _check_vkc_image(model, xi, name, vkc_bytes, psnr, webp_q, webp_bytes, webp_psnr, dec, webp, f, tmp_path)
        assert f"`{name}`: .vkc **{vkc_bytes} bytes**" in summary and f"WebP quality {webp_q}: {webp_bytes} bytes" in summary
    assert summary.startswith("**Quality 6**")


@pytest.mark.slow
def test_client_anomaly_and_threshold(client, model, uploads):
    want = model.score(model.load_images(uploads).images, score=model.info.score).score
    summary, plot, gallery, table, csv_path = client.predict(_files(uploads), float(want.max()) - 1e-3,
                                                             api_name="/anomaly")
    assert "1 of 3 anomalous" in summary
    assert [row[0] for row in table["data"]] == [p.name for p in uploads]
    assert [row[1] for row in table["data"]] == [round(float(s), 3) for s in want]
    assert len(gallery) == 3 and Image.open(gallery[0]["image"]).format == "PNG"
    assert plot["type"] == "matplotlib"
    assert len(list(csv.DictReader(open(csv_path)))) == 3
    summary, *_ = client.predict(_files(uploads), float(want.min()) - 1.0, api_name="/threshold")
    assert "3 of 3 anomalous" in summary


@pytest.mark.slow
def test_client_generate_and_latent(client, model, uploads, data):
    grid = np.asarray(Image.open(client.predict(4, 1.0, 7, api_name="/sample")))
    np.testing.assert_array_equal(grid, handlers.sample_grid(model, 4, 1.0, 7)[0])
    strip = np.asarray(Image.open(client.predict(*_files(uploads[:2]), 4, api_name="/interpolate")))
    assert strip.shape == (SIZE + 4, 4 * (SIZE + 2) + 2)
    points, _ = client.predict(str(data / "test"), "PCA", 20, api_name="/latent")
    assert points["columns"] == ["x", "y", "score", "file"] and len(points["data"]) >= 10


@pytest.mark.slow
def test_bad_input_is_a_message_and_the_app_keeps_serving(client, model, uploads, not_an_image, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="code file notes.png is corrupt, truncated or not a vaekit code file"):
        client.predict(handle_file(str(not_an_image)), api_name="/decompress")
    x = model.load_images(uploads[:1]).images
    cf = codes.encode_images(model, x, ["a.png"], np.full((1, 2), SIZE), "q8")
    cf.fingerprint = "0123456789abcdef"  # written by another model
    codes.save(cf, tmp_path / "foreign.codes")
    with pytest.raises(AppError, match="code file foreign.codes was encoded by model 0123456789abcdef"):
        client.predict(handle_file(str(tmp_path / "foreign.codes")), api_name="/decompress")
    with pytest.raises(AppError, match="no usable image among the uploads"):
        client.predict(_files([not_an_image]), model.info.threshold, api_name="/anomaly")
    with pytest.raises(AppError, match="no such model: .*nope"):
        client.predict(str(tmp_path / "nope"), api_name="/open_model")
    with pytest.raises(AppError, match="no such folder"):
        client.predict(str(tmp_path / "nope"), "PCA", 20, api_name="/latent")
    with pytest.raises(AppError, match="no such folder"):
        client.predict(str(tmp_path / "nope"), 16, 4, 1, api_name="/train")
    with pytest.raises(AppError, match="notes.png"):  # named, not an error with no message
        client.predict(*_files([not_an_image, uploads[0]]), 4, api_name="/interpolate")
    for bad in ("data/x\x00", "a" * 5000):  # a NUL byte, a name too long: a message, not "a bug in vaekit"
        with pytest.raises(AppError, match="not a folder path|cannot be read"):
            client.predict(bad, "PCA", 20, api_name="/latent")
    summary, *_ = client.predict(_files(uploads), model.info.threshold, api_name="/anomaly")  # still serving
    assert "of 3 anomalous" in summary


@pytest.mark.slow
def test_no_server_path_is_served(served, run, uploads):
    _, url = served
    for path in (run / "config.json", uploads[0], Path("/etc/passwd"), Path("pyproject.toml").resolve()):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        assert e.value.code in (403, 404)


@pytest.mark.slow
def test_train_makes_the_new_run_the_apps_model_and_uploads_are_capped(data, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from vaekit_demo.app import build_app, launch

    app = build_app(None, runs_dir=tmp_path / "runs", data_root=data.parent.parent)
    _, url, _ = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True, max_file_size="2kb")
    try:
        c = Client(url, verbose=False)
        with pytest.raises(AppError, match="no model is open"):
            c.predict(4, 1.0, 0, api_name="/sample")
        assert c.predict(api_name="/stop").startswith("Stopping")  # a stale press does not stop the next run
        status, curve, model_md, threshold, _, folder = c.predict(str(data / "train"), SIZE, 3, 2, api_name="/train")
        assert status.startswith("**Done**") and [r[0] for r in curve["data"]] == [1, 2]
        # cross-fitted (142 images): nothing is held out for validation, so no validation line repeats the training loss
        assert {r[2] for r in curve["data"]} == {"train"} and "nothing held out for validation" in status
        run_dir = next((tmp_path / "runs").iterdir())
        root = data.parent.parent.resolve()  # the data root: paths are shown relative to it, never whole
        shown = run_dir.resolve().relative_to(root) if run_dir.resolve().is_relative_to(root) else run_dir.name
        assert f"`{Path(shown).as_posix()}`" in model_md and str(root) not in model_md + status
        assert folder == (data / "train").relative_to(data.parent.parent).as_posix()  # as the box takes it back
        assert threshold["value"] == pytest.approx(vaekit.load(run_dir).info.threshold)
        c.predict(4, 1.0, 0, api_name="/sample")  # now works: the new run is the app's model
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(big)
        assert big.stat().st_size > 2048
        import httpx

        with big.open("rb") as f:  # the server refuses it, whatever the client does
            r = httpx.post(f"{url}gradio_api/upload", files=[("files", f)])
        assert r.status_code == 413 and "2048 bytes" in r.text
        with (data / "train" / "digit0_0000.png").open("rb") as f:
            assert httpx.post(f"{url}gradio_api/upload", files=[("files", f)]).status_code == 200
    finally:
        app.close()


@pytest.mark.slow
def test_cli_demo_builds_and_launches_on_localhost(run, monkeypatch):
    from typer.testing import CliRunner

    import vaekit_demo.app as demo_app
    from vaekit_cli.main import app

    seen = {}
    monkeypatch.setattr(demo_app, "launch", lambda a, **kw: seen.update(app=a, **kw))
    result = CliRunner().invoke(app, ["demo", str(run), "--port", "7999"])
    assert result.exit_code == 0, result.output
    assert seen["port"] == 7999 and seen["share"] is False and seen["max_file_size"] == "25mb"
    assert seen["host"] == "127.0.0.1"
    info = next(b for b in seen["app"].blocks.values() if getattr(b, "elem_id", None) == "model-info")
    assert f"`{run.name}`" in info.value and str(run.parent) not in info.value
    result = CliRunner().invoke(app, ["demo", str(run / "missing")])
    assert result.exit_code == 2
    # another address only when the user asks for it, with a warning
    result = CliRunner().invoke(app, ["demo", str(run), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and seen["host"] == "0.0.0.0" and "reachable from other machines" in result.output


class _Planned(Exception):
    """Raised at the plan event: every automatic setting decided, nothing trained yet."""


def test_the_train_tab_trains_what_vaekit_train_would_by_default(data, tmp_path, model):
    """The page's sliders start at 0 (auto), and 0s plan the run the command plans: a fixed 64 px,
    32-dimensional, 20-epoch model (the page's old defaults) skipped every automatic choice."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.training.job import train
    from vaekit_demo.app import build_app

    props = {c["props"].get("elem_id"): c["props"] for c in build_app(model, runs_dir=tmp_path / "runs").config["components"]}
    assert [props[f"train-{k}"]["value"] for k in ("size", "latent", "epochs")] == [0, 0, 0]

    stop, app_plan = threading.Event(), None
    for ev in training.train_events(data / "train", tmp_path / "app", 0, 0, 0, stop):
        if ev.phase == "plan":
            app_plan = ev.metrics
            stop.set()

    def planned(done, total, phase="", **m):
        if phase == "plan":
            raise _Planned(m)

    with pytest.raises(_Planned) as cli:
        train(data / "train", tmp_path / "cli", ModelConfig(), TrainConfig(), progress=planned)  # what `vaekit train` passes
    assert app_plan == cli.value.args[0]
    assert (app_plan["image_size"], app_plan["latent_dim"]) == (SIZE, 16) and app_plan["epochs"] > 20
