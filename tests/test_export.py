"""`vaekit.export`: the three ONNX files, their metadata, the parity check that guards them,
int8 quantisation and `vaekit export` on the command line."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from export_support import exported, random_run
from vaekit_cli.main import app

pytestmark = pytest.mark.slow  # exports models to ONNX: left out by `dev.py test --fast`


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return exported(tmp_path_factory)


def metadata(path) -> dict[str, str]:
    import onnx  # here, not at the top: `dev.py test --fast` collects this slow module too (onnx: ~1.5 s a worker)

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_writes_three_self_contained_graphs_with_a_dynamic_batch(ex):
    import onnx

    from vaekit.export import IO

    folder = ex.onnx.parent
    assert sorted(p.name for p in folder.iterdir()) == ["digits.decoder.onnx", "digits.encoder.onnx", "digits.onnx"]
    assert ex.report.files == {"scorer": ex.onnx, "encoder": folder / "digits.encoder.onnx",
                               "decoder": folder / "digits.decoder.onnx"}
    for role, path in ex.report.files.items():
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
        # every weight inside the file: no tensor points to external data
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert [i.name for i in proto.graph.input] == list(IO[role]["inputs"])
        assert [o.name for o in proto.graph.output] == list(IO[role]["outputs"])
        for v in [*proto.graph.input, *proto.graph.output]:
            assert v.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert proto.opset_import[0].version == 20


def test_metadata_carries_what_inference_needs_and_the_torch_fingerprint(ex):
    from vaekit.training import rundir
    from vaekit.inference.engine_torch import TorchModel

    torch_model = TorchModel(ex.run)
    cfg = rundir.read_config(ex.run)
    fp = rundir.fingerprint(torch_model.net.state_dict())
    assert fp == cfg["fingerprint"] == torch_model.info.fingerprint == ex.report.fingerprint
    for role, path in ex.report.files.items():
        m = metadata(path)
        assert m["vaekit.format"] == "vaekit-onnx/1" and m["vaekit.role"] == role
        assert m["vaekit.fingerprint"] == fp
        assert (m["vaekit.image_size"], m["vaekit.channels"], m["vaekit.latent_dim"], m["vaekit.likelihood"]) == ("16", "1", "4", "bernoulli")
        assert json.loads(m["vaekit.log_scale"]) is None
        assert json.loads(m["vaekit.preprocessing"])["scale"] == "uint8 pixels / 255 -> float32 in [0, 1]"
        assert m["vaekit.version"] == __import__("vaekit").__version__ and m["vaekit.quantization"] == "none"
        anomaly = json.loads(m["vaekit.anomaly"])
        assert anomaly["threshold"] == cfg["anomaly"]["threshold"] == json.loads(m["vaekit.threshold"])
        assert anomaly["quantiles"] == cfg["anomaly"]["quantiles"]
        assert anomaly["scores"] == cfg["anomaly"]["scores"]
        assert json.loads(m["vaekit.model"]) == cfg["model"]


def test_parity_report_covers_every_output_within_tolerance(ex):
    names = [p.name for p in ex.report.parity]
    assert names[:3] == ["encode: mu", "encode: logvar", "decode: image"]
    # the default score at z = mu is the atypicality; with posterior draws it is excess (nats)
    for tag, name in (("score", "atypicality"), ("score (samples=2)", "excess")):
        assert [n for n in names if n.startswith(tag + ":")] == [
            f"{tag}: {name} (default score{'; √, sd' if name == 'atypicality' else ''})", f"{tag}: neg_elbo",
            f"{tag}: recon", f"{tag}: kl", f"{tag}: pixel_map"]
    assert all(p.ok for p in ex.report.parity)
    scores = [p for p in ex.report.parity if "neg_elbo" in p.name]
    assert max(p.max_rel for p in scores) < 1e-5  # float32 noise, far inside the 1e-4 tolerance
    assert ex.report.samples == 13


def test_parity_in_chunks_reports_the_same_outputs_and_catches_one_bad_image(ex, monkeypatch):
    # a 1024 px model's parity held every output of 13 images in float64 at once (6.4 GB); it goes
    # a few images at a time now, and one image's mismatch still fails the whole output
    import vaekit
    import vaekit.export.parity as parity

    t, o = vaekit.load(ex.run), vaekit.load(ex.onnx)
    images = parity.sample_inputs(t)
    whole = parity.check_parity(t, o, images)
    monkeypatch.setattr(parity, "PARITY_PIXELS", 2 * 16 * 16)  # two images a chunk
    chunked = parity.check_parity(t, o, images)
    # (the differences themselves move with the batch's make-up: float noise, far inside the tolerance)
    assert [p.name for p in chunked] == [p.name for p in whole] and all(p.ok for p in chunked)
    real = o.score

    def off_on_the_last_image(x, *a, **k):  # the last chunk (image 13 alone) drifts
        s = real(x, *a, **k)
        if len(x) == 1:
            s.neg_elbo = s.neg_elbo * 1.01
        return s

    monkeypatch.setattr(o, "score", off_on_the_last_image)
    bad = {p.name: p for p in parity.check_parity(t, o, images)}
    assert not bad["score: neg_elbo"].ok and bad["score: neg_elbo"].max_rel == pytest.approx(0.01, rel=1e-3)
    assert bad["encode: mu"].ok


def test_a_drift_in_the_exported_maths_fails_the_export_and_writes_nothing(ex, tmp_path, monkeypatch):
    import torch

    import vaekit.export.rewrite
    from vaekit.export import ExportError, export

    real = vaekit.export.rewrite.for_onnx

    def drifted(net, int8=False):  # what the exporter traces, off by a little; the torch engine is untouched
        net = real(net, int8)
        with torch.no_grad():
            net.decoder.convs[-1].taps.mul_(1.01)
        return net

    monkeypatch.setattr(vaekit.export.rewrite, "for_onnx", drifted)
    with pytest.raises(ExportError, match=r"ONNX model does not match torch, nothing written: .*neg_elbo"):
        export(ex.run, tmp_path / "drift.onnx")
    assert list(tmp_path.iterdir()) == []  # no files, no staging folder left behind


def test_bad_arguments_are_refused_before_any_work(ex, tmp_path):
    from vaekit.export import export

    with pytest.raises(ValueError, match="must be a file name ending in .onnx, got '.*model.txt'"):
        export(ex.run, tmp_path / "model.txt")
    (tmp_path / "taken.encoder.onnx").mkdir()
    with pytest.raises(ValueError, match="taken.encoder.onnx is a folder"):
        export(ex.run, tmp_path / "taken.onnx")
    with pytest.raises(ValueError, match="quantize must be one of \\('int8',\\) or None, got 'int4'"):
        export(ex.run, tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="not a vaekit run directory|run config not found"):
        export(ex.digits, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 16, 16\)"):
        export(ex.run, tmp_path / "m.onnx", images=np.zeros((3, 1, 8, 8), np.uint8))


def test_weights_that_are_not_the_ones_the_config_names_are_refused(ex, tmp_path):
    from vaekit.training import rundir
    from vaekit.export import export

    run = shutil.copytree(ex.run, tmp_path / "run")
    cfg = rundir.read_config(run)
    cfg["fingerprint"] = "0123456789abcdef"
    rundir.write_config(run, cfg)
    # the torch engine itself refuses weights whose fingerprint is not the stored one
    with pytest.raises(rundir.RunError, match="weights changed since its threshold was stored"):
        export(run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_gaussian_rgb_odd_size_model_exports_its_sigma_and_matches_torch(tmp_path):
    import vaekit
    from vaekit.export import export

    # 20 px: stages 20 -> 10 -> 5 -> 3, so the decoder needs output_padding 0 as well as 1 (arch v1,
    # vaekit 0.1's ConvTranspose decoder, which old runs still export with)
    run = random_run(tmp_path / "run", image_size=20, channels=3, latent_dim=3, base_channels=4, likelihood="gaussian",
                     arch="v1")
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 20, 20), dtype=np.uint8)
    report = export(run, tmp_path / "g.onnx", images=images)
    assert all(p.ok for p in report.parity)
    t, o = vaekit.load(run), vaekit.load(tmp_path / "g.onnx")
    assert o.info.log_scale == pytest.approx(t.info.log_scale, abs=0) and len(o.info.log_scale) == 3
    assert o.info.log_scale[0] == pytest.approx(-1.0)
    st, so = t.score(images), o.score(images)
    np.testing.assert_allclose(so.score, st.score, rtol=1e-4)  # the default (excess) needs sigma
    np.testing.assert_allclose(so.neg_elbo, st.neg_elbo, rtol=1e-5)
    assert o.info.threshold is None and t.info.threshold is None  # an untrained run has none
    # the int8 form (phase convolutions, crops for output_padding 0) exports and quantises too
    q = export(run, tmp_path / "g8.onnx", images=images, quantize="int8")
    assert all(p.ok for p in q.parity) and 0 < q.quantization.score_mean_rel < 0.05
    assert vaekit.load(tmp_path / "g8.onnx").decode(np.zeros((2, 3), np.float32)).shape == (2, 3, 20, 20)
    # neither a ConvTranspose graph nor an int8 one takes the NCHWc layout, which has no kernel for them
    import onnxruntime as ort

    for f in ("g.onnx", "g8.onnx"):
        level = vaekit.load(tmp_path / f)._scorer.get_session_options().graph_optimization_level
        assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, f


@pytest.mark.parametrize("c_out, k, size, bias", [(1, 3, 64, True), (3, 3, 17, True), (2, 5, 9, False)])
def test_tap_sum_rewrite_computes_the_same_convolution(c_out, k, size, bias):
    import torch
    from torch import nn

    from vaekit.export.rewrite import TapSumConv

    torch.manual_seed(0)
    conv = nn.Conv2d(7, c_out, k, padding=k // 2, bias=bias)
    x = torch.randn(3, 7, size, size)
    with torch.no_grad():
        want, got = conv(x), TapSumConv(conv)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # same sums, another order
    with pytest.raises(ValueError, match="stride-1 'same'"):
        TapSumConv(nn.Conv2d(7, 1, 3, stride=2, padding=1))


@pytest.mark.parametrize("c_in, c_out, h, w, output_padding", [(5, 3, 4, 4, 1), (8, 1, 5, 3, 0), (2, 4, 1, 1, 1)])
def test_phase_rewrite_computes_the_same_transposed_convolution(c_in, c_out, h, w, output_padding):
    import torch
    from torch import nn

    from vaekit.export.rewrite import PhaseConvTranspose

    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=output_padding)
    x = torch.randn(3, c_in, h, w)
    with torch.no_grad():
        want = nn.functional.leaky_relu(deconv(x), 0.2)
        got = PhaseConvTranspose(deconv, 0.2)(x)
    assert got.shape == want.shape == (3, c_out, 2 * h - 1 + output_padding, 2 * w - 1 + output_padding)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3x3 stride-2 padding-1"):
        PhaseConvTranspose(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), 0.2)


def test_export_traces_the_rewritten_decoder_and_leaves_the_torch_model_alone(ex):
    import onnx

    from vaekit.inference.engine_torch import TorchModel
    from vaekit.export.rewrite import TapSumConv, for_onnx

    net = TorchModel(ex.run).net
    copy = for_onnx(net)
    assert isinstance(copy.decoder.convs[-1], TapSumConv)
    assert not isinstance(net.decoder.convs[-1], TapSumConv)  # the engine's own model is untouched
    decoder = onnx.load(str(ex.report.files["decoder"]))
    inits = {t.name: t for t in decoder.graph.initializer}
    # the final 3x3 conv to C channels is gone; a 1x1 conv to 9*C tap maps is there instead
    convs = [n for n in decoder.graph.node if n.op_type == "Conv"]
    kernels = [list(inits[n.input[1]].dims) for n in convs if n.input[1] in inits]
    c_in = net.decoder.convs[-1].in_channels
    assert [9 * net.cfg.channels, c_in, 1, 1] in kernels
    assert [net.cfg.channels, c_in, 3, 3] not in kernels


def squash(text: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_cli_export_int8_reports_parity_and_the_score_change(ex):
    import onnx

    import vaekit

    # no -o: the run's name + .onnx, next to the run directory
    out = ex.run.parent / "run.onnx"
    r = CliRunner().invoke(app, ["--threads", "1", "export", str(ex.run), "--quantize", "int8",
                                 "--images", str(ex.digits / "test" / "normal")])
    assert r.exit_code == 0, r.output
    assert "parity, onnxruntime vs torch" in r.output and "FAIL" not in r.output
    assert "quantised: int8 static QDQ" in r.output and "calibrated on your images" in squash(r.output)
    assert f"wrote {out} (scorer" in squash(r.output)
    reported = float(__import__("re").search(r"max rel change ([0-9.e+-]+),", r.output)[1])
    assert "; the default score vs fp32 ONNX: max rel change" in squash(r.output)
    assert ("stored threshold is the fp32 model's" in squash(r.output)) == (reported > 0.02), r.output
    for role in ("scorer", "encoder", "decoder"):
        p = {"scorer": out, "encoder": out.with_name("run.encoder.onnx"), "decoder": out.with_name("run.decoder.onnx")}[role]
        assert metadata(p)["vaekit.quantization"] == "int8-static-qdq"
    ops = {n.op_type for n in onnx.load(str(out.with_name("run.encoder.onnx"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the v2 decoder (resize-then-conv) has no ConvTranspose at all: every convolution is quantised
    decoder = onnx.load(str(out.with_name("run.decoder.onnx"))).graph.node
    assert not any(n.op_type == "ConvTranspose" for n in decoder)
    assert sum(n.op_type == "Conv" for n in decoder) >= 6 and {"QuantizeLinear", "Resize"} <= {n.op_type for n in decoder}
    m = vaekit.load(out)
    fp32 = vaekit.load(ex.onnx)
    x = m.load_images(ex.digits / "test" / "normal").images
    change = np.abs(m.score(x).neg_elbo / fp32.score(x).neg_elbo - 1)
    assert 0 < change.max() < 0.02  # quantised for real, and still close
    assert m.info.fingerprint == fp32.info.fingerprint  # the same weights, so code files interchange
    # scoring says the threshold it applies was set on the float32 model (it said nothing)
    from vaekit.anomaly.threshold import resolve_threshold

    assert "set on the float32 model" in resolve_threshold(m, m.info.score, "mean", None)[1]
    assert "float32" not in resolve_threshold(fp32, fp32.info.score, "mean", None)[1]


def test_cli_export_errors_are_one_line_and_exit_2(ex, tmp_path):
    r = CliRunner().invoke(app, ["export", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in squash(r.output)
    r = CliRunner().invoke(app, ["export", str(ex.run), "-o", str(tmp_path / "x.txt")])
    assert r.exit_code == 2 and "error: output must be a file name ending in .onnx" in squash(r.output)
    assert "Traceback" not in r.output


def test_a_large_latent_grid_keeps_its_kl_exact_on_a_flat_image(tmp_path):
    # a 512 px grid model has 128 x 128 x C latent terms, all alike on a flat image: a float32
    # sum of them in onnxruntime drifted by ~6e-4 of the total (a 1600 px surface's export failed
    # its own parity check on it); the graph sums in float64
    import vaekit
    from vaekit.export import export

    run = random_run(tmp_path / "run", image_size=512, layout="grid", channels=3, likelihood="gaussian")
    flat = np.full((2, 3, 512, 512), 255, np.uint8)
    flat[1] = 0
    export(run, tmp_path / "g.onnx", images=flat)
    o = vaekit.load(tmp_path / "g.onnx")
    mu, logvar = (v.astype(np.float64) for v in o.encode(flat))
    want = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(1)
    assert mu.shape[1] >= 128 * 128
    np.testing.assert_allclose(o.score(flat).kl, want, rtol=2e-6)


def test_the_atypicality_is_compared_as_a_distance_in_sd():
    """A 2-epoch surface's export was refused: a prior sample's 6,827 sd² differed by 1.1e-4
    (0.005 sd) while every ELBO column agreed to 4e-7. Compared as its square root, float noise
    passes and a real disagreement (1%) does not."""
    from vaekit.export.parity import _compare, _distances

    torch_side = np.array([6827.086, 8095.7, 522190.7])
    assert not _compare("sd2", torch_side * (1 + 1.13e-4), torch_side, 1e-4, 1e-4).ok  # as sd², refused
    assert _compare("sd", *_distances(torch_side * (1 + 1.13e-4), torch_side), 1e-4, 1e-4).ok
    assert not _compare("sd", *_distances(torch_side * 1.01, torch_side), 1e-4, 1e-4).ok
