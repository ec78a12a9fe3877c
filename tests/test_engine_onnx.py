"""The onnxruntime engine: same interface and results as torch, no torch import, clear errors
for files that are not a vaekit export, and every inference command giving the same output
with an exported model as with the run directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from export_support import exported, random_run
from vaekit_cli.main import app

pytestmark = pytest.mark.slow  # exports a model to ONNX (module fixture): left out by `dev.py test --fast`

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return exported(tmp_path_factory)


@pytest.fixture(scope="module")
def engines(ex):
    import vaekit

    return vaekit.load(ex.run), vaekit.load(ex.onnx)


@pytest.fixture(scope="module")
def images(ex, engines):
    normal = engines[1].load_images(ex.digits / "test" / "normal").images[:8]
    anomalous = engines[1].load_images(ex.digits / "test" / "anomalous").images[:8]
    return np.concatenate([normal, anomalous])


# --- the engine -----------------------------------------------------------------------------

def test_load_gives_the_same_interface_and_info_for_both_kinds(ex, engines):
    t, o = engines
    assert type(o).__name__ == "OnnxModel" and o.info.engine == "onnxruntime" and o.info.source == ex.onnx
    same = ("image_size", "channels", "latent_dim", "likelihood", "fingerprint", "threshold", "threshold_quantile",
            "quantiles", "val_scores", "log_scale", "score", "thresholds")
    assert {k: getattr(o.info, k) for k in same} == {k: getattr(t.info, k) for k in same}
    assert o.info.threshold is not None and len(o.info.val_scores) > 0


def test_encode_decode_reconstruct_score_match_torch(engines, images):
    t, o = engines
    for a, b in zip(o.encode(images), t.encode(images)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    z = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    np.testing.assert_allclose(o.decode(z), t.decode(z), atol=1e-5)
    np.testing.assert_allclose(o.reconstruct(images), t.reconstruct(images), atol=1e-5)
    np.testing.assert_allclose(o.sample(3, seed=2), t.sample(3, seed=2), atol=1e-5)
    for kwargs in ({}, {"samples": 3}, {"score": "neg_elbo"}):
        so, st = o.score(images, **kwargs), t.score(images, **kwargs)
        assert so.name == st.name
        np.testing.assert_allclose(so.score, st.score, rtol=1e-4, atol=1e-4)  # atypicality: a z-score, ~0 at times
        np.testing.assert_allclose(so.kl, st.kl, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(so.pixel_map, st.pixel_map, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(o.iwae(images[:3], samples=4), t.iwae(images[:3], samples=4), rtol=1e-4)


def test_scores_do_not_depend_on_the_batch(engines, images):
    o = engines[1]
    whole = o.score(images).score
    old = o.batch_size
    try:
        o.batch_size = 3  # batches of 3, 3, ..., 1 through the dynamic batch dimension
        np.testing.assert_allclose(o.score(images).score, whole, rtol=1e-6)
    finally:
        o.batch_size = old
    np.testing.assert_allclose(o.score(images[5:6]).score, whole[5:6], rtol=1e-6)
    assert o.encode(images[:0])[0].shape == (0, 4)


def test_fp32_graphs_take_the_nchwc_layout_and_graphs_it_has_no_kernel_for_do_not(ex, tmp_path):
    # arch v2's graphs are convolutions and nearest resizes, which NCHWc runs 1.4x faster;
    # ConvTranspose (arch v1) and int8 QDQ graphs would be wrapped in reorders (docs/benchmarks.md)
    import onnxruntime as ort

    from vaekit.inference import engine_onnx

    m = vaekit.load(ex.onnx)
    m.encode(np.zeros((1, 1, 16, 16), np.uint8))
    m.decode(np.zeros((1, 4), np.float32))
    levels = {role: s.get_session_options().graph_optimization_level for role, s in m._sessions.items()}
    assert set(levels) == {"scorer", "encoder", "decoder"}
    assert set(levels.values()) == {ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    for slow in engine_onnx.NCHWC_SLOW_OPS:
        assert slow not in Path(ex.onnx).read_bytes()
    so = engine_onnx.session_options("scorer", 1, nchwc=False)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert engine_onnx.session_options("encoder", 1, nchwc=False).graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_come_from_the_argument_or_vaekit_threads(ex, monkeypatch):
    from vaekit.inference.engine_onnx import OnnxModel

    assert OnnxModel(ex.onnx, threads=1)._scorer.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("VAEKIT_THREADS", "2")
    m = vaekit.load(ex.onnx)
    m.encode(np.zeros((1, 1, 16, 16), np.uint8))
    assert {s.get_session_options().intra_op_num_threads for s in m._sessions.values()} == {2}
    assert m._scorer.get_providers() == ["CPUExecutionProvider"]


def test_the_runtime_path_never_imports_torch(ex, tmp_path):
    """What `pip install "vaekit[runtime]"` gives: every inference command works in a process
    where torch and every other optional package (onnx, scikit-learn, scikit-image, matplotlib,
    gradio) fail to import."""
    normal, anomalous = ex.digits / "test" / "normal", ex.digits / "test" / "anomalous"
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "onnx", "onnxscript", "sklearn", "skimage", "matplotlib", "gradio"):
            sys.modules[name] = None  # `import name` now raises ImportError
        import vaekit.inference.engine_onnx
        assert "onnxruntime" not in sys.modules  # imported when a model is opened, not before
        import numpy as np, vaekit
        from vaekit import codes
        m = vaekit.load({str(ex.onnx)!r})
        x = m.load_images({str(normal)!r}).images
        mu, logvar = m.encode(x)
        img = m.decode(mu)
        s = m.score(x)
        report = codes.encode_folder(m, {str(normal)!r}, {str(tmp_path / "n.codes")!r}, "f32")
        codes.decode_file(m, {str(tmp_path / "n.codes")!r}, {str(tmp_path / "decoded")!r})
        from vaekit_cli.main import app
        from typer.testing import CliRunner
        model, tmp = {str(ex.onnx)!r}, {str(tmp_path)!r}
        for args in (["anomaly-score", model, {str(anomalous)!r}, "--maps", tmp + "/maps"],
                     ["encode", model, {str(normal)!r}, "-o", tmp + "/cli.codes"],
                     ["decode", model, tmp + "/cli.codes", "-o", tmp + "/cli-decoded"],
                     ["reconstruct", model, {str(normal)!r}, "-o", tmp + "/recon"],
                     ["sample", model, "-n", "4", "-o", tmp + "/samples.png"]):
            r = CliRunner().invoke(app, args)
            assert r.exit_code == 0, (args, r.output)
            if args[0] == "reconstruct":
                assert "no SSIM column: SSIM needs scikit-image: pip install 'vaekit[metrics]'" in " ".join(r.output.split())
        r = CliRunner().invoke(app, ["evaluate", model, "--normal", {str(normal)!r}, "--anomalous", {str(anomalous)!r}])
        assert r.exit_code == 2 and "pip install 'vaekit[metrics]'" in r.output, r.output  # not [train]: no torch
        loaded = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "onnx", "onnxscript") and sys.modules[k] is not None)
        print("OK", len(x), mu.shape, img.shape, s.score.shape, report.count, loaded)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VAEKIT_THREADS", None)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(list(normal.iterdir()))
    assert r.stdout.strip().splitlines()[-1] == f"OK {n} ({n}, 4) ({n}, 1, 16, 16) ({n},) {n} []"
    for folder in ("decoded", "cli-decoded"):
        assert len(list((tmp_path / folder).glob("*.png"))) == n
    assert len(list((tmp_path / "recon").glob("*.png"))) == n + 1  # and comparison.png
    assert len(list((tmp_path / "maps").glob("*.png"))) == len(list(anomalous.iterdir()))


# --- bad files -------------------------------------------------------------------------------

def test_files_that_are_not_a_vaekit_export_get_a_clear_error(ex, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    import vaekit
    from vaekit.inference.engine_onnx import OnnxModelError

    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    data = ex.onnx.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    cases = {
        "text.onnx": "is not a readable ONNX model \\(not ONNX, truncated or corrupt\\)",
        "empty.onnx": "is not a readable ONNX model",
        "truncated.onnx": "is not a readable ONNX model",
        "plain.onnx": "is not a vaekit export \\(no vaekit metadata\\); write one with `vaekit export",
    }
    for name, message in cases.items():
        with pytest.raises(OnnxModelError, match=message):
            vaekit.load(tmp_path / name)
    assert issubclass(OnnxModelError, ValueError)  # so the CLI reports it as bad input (exit 2)
    with pytest.raises(OnnxModelError, match="is the 'encoder' part of a vaekit export, expected the scorer; "
                                             "give the main file digits.onnx"):
        vaekit.load(ex.onnx.with_name("digits.encoder.onnx"))
    r = CliRunner().invoke(app, ["anomaly-score", str(tmp_path / "text.onnx"), str(ex.digits / "test" / "normal")])
    assert r.exit_code == 2 and "is not a readable ONNX model" in r.output and "Traceback" not in r.output


def test_missing_or_foreign_side_files_are_named(ex, tmp_path):
    import vaekit
    from vaekit.inference.engine_onnx import OnnxModelError
    from vaekit.export import export

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ex.onnx, alone / "m.onnx")
    m = vaekit.load(alone / "m.onnx")
    x = np.zeros((2, 1, 16, 16), np.uint8)
    assert m.score(x).score.shape == (2,)  # scoring needs only the main file
    with pytest.raises(FileNotFoundError, match="m.encoder.onnx is missing: encode needs it"):
        m.encode(x)
    with pytest.raises(FileNotFoundError, match="m.decoder.onnx is missing: decode needs it"):
        m.sample(1)
    other = export(random_run(tmp_path / "other", image_size=16, latent_dim=4, base_channels=8), tmp_path / "other.onnx")
    shutil.copy(other.files["decoder"], alone / "m.decoder.onnx")
    with pytest.raises(OnnxModelError, match="m.decoder.onnx belongs to another model"):
        vaekit.load(alone / "m.onnx").decode(np.zeros((1, 4), np.float32))


# --- every inference command, both kinds of model ----------------------------------------------

def invoke(*args):
    r = CliRunner().invoke(app, ["--threads", "1", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def both(tmp_path, ex, *args, out_name=None):
    """Run the same command with the run directory and with the .onnx; return both outputs' paths."""
    outs = []
    for kind, model in (("torch", ex.run), ("onnx", ex.onnx)):
        out = tmp_path / kind / out_name if out_name else None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        r = invoke(args[0], model, *args[1:], *(["-o", out] if out is not None else []))
        outs.append((r, out))
    return outs


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.rglob("*.png"))}


def test_cli_anomaly_score_same_rows(ex, tmp_path):
    (t, t_csv), (o, o_csv) = both(tmp_path, ex, "anomaly-score", ex.digits / "test", out_name="scores.csv")
    rows_t, rows_o = (list(csv.DictReader(p.open())) for p in (t_csv, o_csv))
    assert [r["path"] for r in rows_t] == [r["path"] for r in rows_o] and len(rows_t) > 10
    for field in ("score", "neg_elbo", "recon", "kl", "excess", "threshold"):
        np.testing.assert_allclose([float(r[field]) for r in rows_o], [float(r[field]) for r in rows_t], rtol=1e-4, atol=1e-4)
    assert [r["anomalous"] for r in rows_o] == [r["anomalous"] for r in rows_t]


def test_cli_evaluate_same_metrics(ex, tmp_path):
    (t, _), (o, _) = both(tmp_path, ex, "evaluate", "--normal", ex.digits / "test" / "normal",
                          "--anomalous", ex.digits / "test" / "anomalous", "--json")
    mt, mo = json.loads(t.stdout), json.loads(o.stdout)
    assert mo.keys() == mt.keys()
    for k, v in mt.items():
        if isinstance(v, float):
            assert mo[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_cli_encode_same_codes_and_each_engine_decodes_the_others_file(ex, tmp_path):
    src = ex.digits / "test" / "normal"
    (t, t_codes), (o, o_codes) = both(tmp_path, ex, "encode", src, "--precision", "f32", "--json", out_name="n.codes")
    from vaekit import codes

    ct, co = codes.load(t_codes), codes.load(o_codes)
    assert co.names == ct.names and co.fingerprint == ct.fingerprint
    np.testing.assert_allclose(co.latents(), ct.latents(), atol=1e-5)
    # a torch-written file decodes with the ONNX engine and the reverse, to the same pixels
    invoke("decode", ex.onnx, t_codes, "-o", tmp_path / "t-by-onnx")
    invoke("decode", ex.run, o_codes, "-o", tmp_path / "o-by-torch")
    invoke("decode", ex.run, t_codes, "-o", tmp_path / "t-by-torch")
    a, b, c = pngs(tmp_path / "t-by-onnx"), pngs(tmp_path / "o-by-torch"), pngs(tmp_path / "t-by-torch")
    assert a.keys() == b.keys() == c.keys() and len(a) == len(ct.names)
    for k in a:  # 8-bit PNGs: rounding may move a value by one level
        assert np.abs(a[k] - c[k]).max() <= 1 and np.abs(b[k] - c[k]).max() <= 1


def test_cli_reconstruct_same_quality(ex, tmp_path):
    (t, t_dir), (o, o_dir) = both(tmp_path, ex, "reconstruct", ex.digits / "test" / "anomalous", "--json", out_name="rec")
    jt, jo = json.loads(t.stdout)["images"], json.loads(o.stdout)["images"]
    assert [r["name"] for r in jo] == [r["name"] for r in jt] and len(jt) == 12
    # PSNR/SSIM are measured on the 8-bit PNGs, where rounding may move a value by one level
    np.testing.assert_allclose([r["psnr"] for r in jo], [r["psnr"] for r in jt], rtol=1e-2)
    np.testing.assert_allclose([r["ssim"] for r in jo], [r["ssim"] for r in jt], atol=1e-2)
    pt, po = pngs(t_dir), pngs(o_dir)
    assert pt.keys() == po.keys() and all(np.abs(pt[k] - po[k]).max() <= 1 for k in pt)


def test_cli_sample_and_interpolate_same_images(ex, tmp_path):
    both(tmp_path, ex, "sample", "-n", "6", "--seed", "3", out_name="s.png")
    a, b = sorted((ex.digits / "test" / "normal").glob("*.png"))[:2]
    both(tmp_path, ex, "interpolate", a, b, "-n", "5", out_name="i.png")
    for name in ("s.png", "i.png"):
        t, o = (np.asarray(Image.open(tmp_path / kind / name), dtype=np.int16) for kind in ("torch", "onnx"))
        assert t.shape == o.shape and np.abs(t - o).max() <= 1


def test_an_export_without_onnxruntime_installed_names_the_extra(ex, monkeypatch):
    # `vaekit[train]` has no onnxruntime: the export was called "not a readable ONNX model
    # (not ONNX, truncated or corrupt): No module named 'onnxruntime'"
    import sys

    import vaekit
    from vaekit.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails as when not installed
    with pytest.raises(MissingExtra, match=r"pip install 'vaekit\[runtime\]'") as e:
        vaekit.load(ex.onnx)
    assert "corrupt" not in str(e.value)
