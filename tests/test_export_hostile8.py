"""Exports attacked as a careless or hostile user would: parts of two exports of one run mixed
(an fp32 main file beside an int8 part), outputs inside the run or under a file, a surface's
defect reader from another export of the same weights. Each is refused with one line and exit 2,
and nothing is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vaekit
from export_support import exported, random_run
from vaekit.errors import BadInput, DamagedFile
from vaekit_cli.main import app


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """(fp32 main file, int8 main file): two exports of one run, each with its parts."""
    from vaekit.export import export

    ex = exported(tmp_path_factory)
    q = tmp_path_factory.mktemp("int8") / "digits.onnx"
    export(ex.run, q, quantize="int8")
    return ex.onnx, q


def _mixed(tmp_path: Path, main: Path, part_from: Path, role: str) -> Path:
    """A new folder holding `main` with its parts, except `role`'s, which comes from the export `part_from`."""
    tmp_path.mkdir()
    for src in (main, main.with_name(f"{main.stem}.encoder.onnx"), main.with_name(f"{main.stem}.decoder.onnx")):
        shutil.copyfile(src, tmp_path / src.name)
    shutil.copyfile(part_from.with_name(f"{part_from.stem}.{role}.onnx"), tmp_path / f"{main.stem}.{role}.onnx")
    return tmp_path / main.name


@pytest.mark.slow
def test_an_int8_part_beside_an_fp32_main_file_is_refused_not_used(two_exports, tmp_path):
    """Both exports carry the run's fingerprint: the int8 decoder was used by the fp32 model and
    decoded images 5e-3 away from its own, unnoticed."""
    fp32, int8 = two_exports
    mixed = vaekit.load(_mixed(tmp_path / "a", fp32, int8, "decoder"))
    with pytest.raises(DamagedFile, match="another export of this model.*int8-static-qdq"):
        mixed.decode(np.zeros((1, mixed.info.latent_dim), np.float32))
    mixed.encode(np.zeros((1, 1, 16, 16), np.uint8))  # the encoder is its own: fine
    back = vaekit.load(_mixed(tmp_path / "b", int8, fp32, "encoder"))
    with pytest.raises(DamagedFile, match="another export of this model"):
        back.encode(np.zeros((1, 1, 16, 16), np.uint8))


@pytest.mark.slow
def test_the_cli_refuses_a_mixed_set_with_one_line_and_writes_nothing(two_exports, tmp_path):
    fp32, int8 = two_exports
    main = _mixed(tmp_path / "set", fp32, int8, "decoder")
    digits = Path(fp32).parents[1] / "digits" / "test" / "normal"
    r = _cli("reconstruct", main, digits, "-o", tmp_path / "rec")
    assert r.exit_code == 2 and "another export of this model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "rec").exists()
    # the matching sets themselves still work
    assert _cli("reconstruct", int8, digits, "-o", tmp_path / "rec8").exit_code == 0


def _no_trace(monkeypatch):
    """Make the (slow) trace fail loudly: a refusal that comes after it would show as this error."""
    from vaekit.export import job

    def traced(*a, **k):
        raise AssertionError("the output should have been refused before the trace")

    monkeypatch.setattr(job, "export_graphs", traced)


def test_an_output_inside_the_run_directory_is_refused_before_the_trace(tmp_path, monkeypatch):
    from vaekit.export import export

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    before = sorted(p.name for p in run.rglob("*"))
    _no_trace(monkeypatch)
    for out in (run / "m.onnx", run / "checkpoint" / "m.onnx", run / ".." / run.name / "model.safetensors.onnx"):
        with pytest.raises(BadInput, match="inside the model's run directory"):
            export(run, out)
    r = _cli("export", run, "-o", run / "m.onnx")
    assert r.exit_code == 2 and "inside the model's run directory" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in run.rglob("*")) == before


def _reseal(path: Path, **meta) -> None:
    """Rewrite `path` with some vaekit metadata changed and a valid seal: what another export
    (of the same weights, with other settings) would have written."""
    import onnx

    from vaekit.export.metadata import sealed

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, **meta})
    path.write_bytes(sealed(proto))


@pytest.mark.slow
def test_a_defect_reader_of_another_export_of_the_same_weights_is_refused(tmp_path):
    """Two runs trained alike but with other reader settings share the VAE's weights and its
    fingerprint (seen: two surfaces, readers of 40 and 20 steps): the one's s.reader.onnx beside
    the other's s.onnx scored with the other's threshold, 0.50 against a threshold of 0.5003."""
    import json

    from PIL import Image

    from surface_support import train_surface
    from vaekit.export import export

    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    for i in range(24):
        img = 128 + 60 * np.sin(np.arange(48) / 2.0 + rng.uniform(0, 6.3))[None, :] + rng.normal(0, 12, (48, 48))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp_path / "train" / f"s_{i:03d}.png")
    run = train_surface(tmp_path / "train", tmp_path / "run", epochs=1, reader_steps=10)
    export(run, tmp_path / "e" / "s.onnx")
    own = json.loads((run / "config.json").read_text())["reader_fingerprint"]
    model = vaekit.load(tmp_path / "e" / "s.onnx")
    x = model.load_images(tmp_path / "train").images[:2].copy()
    assert model.score(x).name == "defect"
    _reseal(tmp_path / "e" / "s.reader.onnx", **{"vaekit.reader_fingerprint": json.dumps("0123456789abcdef")})
    with pytest.raises(DamagedFile, match="not the defect reader s.onnx was calibrated with"):
        vaekit.load(tmp_path / "e" / "s.onnx").score(x)
    r = _cli("anomaly-score", tmp_path / "e" / "s.onnx", tmp_path / "train", "-o", tmp_path / "s.csv")
    assert r.exit_code == 2 and "not the defect reader" in r.output and not (tmp_path / "s.csv").exists()
    assert model.info.reader_fingerprint == own  # the one the torch engine checks reader.safetensors against



def test_exporting_the_root_folder_without_o_is_one_line_not_a_traceback():
    """`vaekit export /`: the default output is named after the run's folder, and / has no name."""
    r = _cli("export", "/")
    assert r.exit_code == 2 and "name the file with -o" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_a_foreign_onnx_that_onnxruntime_cannot_initialise_is_one_line_without_its_log(tmp_path):
    """A plain ONNX file whose weight lies in "external data" (not a vaekit export, which holds its
    weights inside): onnxruntime logged its own error to stderr before vaekit's line."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    w.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    (tmp_path / "other.onnx").write_bytes(model.SerializeToString())
    assert onnx.load(str(tmp_path / "other.onnx")).graph.node  # a valid ONNX file
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "images" / "a.png")
    # a fresh process run where the file lies (so its data path passes onnxruntime's first check and fails
    # its second, which it logged); in-process, an earlier onnxruntime set-up kept the log quiet
    r = subprocess.run([str(Path(sys.executable).with_name("vaekit")), "anomaly-score", "other.onnx", "images", "-o",
                        "s.csv"], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "is not a readable ONNX model" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.csv").exists()


def test_an_output_inside_the_parity_images_folder_is_refused_before_the_trace(tmp_path, monkeypatch):
    """`--images DIR` is an input folder: `export -o DIR/m.onnx` wrote three files among the user's
    images, where no command writes (README: an output inside an input folder is exit 2)."""
    from PIL import Image

    from vaekit.export import export

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(imgs / f"i{i}.png")
    before = sorted(p.name for p in imgs.rglob("*"))
    _no_trace(monkeypatch)
    for out, given in ((imgs / "m.onnx", imgs), (imgs / "sub" / "m.onnx", imgs), (imgs / "sub" / "m.onnx", [str(imgs)])):
        with pytest.raises(BadInput, match="inside the input folder"):
            export(run, out, images=given)
    r = _cli("export", run, "-o", imgs / "m.onnx", "--images", imgs)
    assert r.exit_code == 2 and "inside the input folder" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in imgs.rglob("*")) == before


def test_int8_without_images_calibrates_on_the_runs_training_images_or_refuses(tmp_path):
    """int8 was calibrated and judged on the model's own prior samples, darker and flatter than real
    images: on a surface model the int8 encoder gave one code for every real image, and the change it
    reported (7%) was measured on those samples. Now the run's training images calibrate it, and
    without them (the folder moved) int8 asks for --images."""
    import json

    from export_support import random_job
    from vaekit.export import export

    run, data = random_job(tmp_path, 12)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data": {"root": str(data)}}))
    rep = export(run, tmp_path / "q" / "m.onnx", quantize="int8")
    assert "calibrated on the run's training images" in rep.quantization.method, rep.quantization
    assert "the score change measured on 6 others of them" in rep.quantization.method  # not in-sample
    data.rename(tmp_path / "moved")
    with pytest.raises(BadInput, match="pass --images"):
        export(run, tmp_path / "q2" / "m.onnx", quantize="int8")
    assert not (tmp_path / "q2").exists()
    rep = export(run, tmp_path / "q3" / "m.onnx", quantize="int8", images=tmp_path / "moved")
    assert "calibrated on your images" in rep.quantization.method


def test_int8_calibration_says_when_the_training_folder_is_not_what_the_run_read(tmp_path, monkeypatch):
    """A run trained on one file stores that file's folder as data.root: int8 calibrated on every
    image beside it, unsaid. And a root stored relative (older runs) is found beside the run, as
    vaekit.anomaly.held_out finds it, not only under the working directory."""
    import json

    from export_support import random_job
    from vaekit.export import export

    run, data = random_job(tmp_path, 12)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data": {"root": data.name, "images": 1, "skipped": []}}))
    monkeypatch.chdir(tmp_path / "run")  # not where the relative root lies
    rep = export(run, tmp_path / "q" / "m.onnx", quantize="int8")
    assert "calibrated on the run's training images" in rep.quantization.method
    assert "the 12 images now under" in rep.quantization.method and "read 1" in rep.quantization.method


def test_int8_on_few_training_images_says_its_change_is_measured_in_sample(tmp_path):
    import json

    from export_support import random_job
    from vaekit.export import export

    run, data = random_job(tmp_path, 6)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data": {"root": str(data), "images": 6}}))
    rep = export(run, tmp_path / "q" / "m.onnx", quantize="int8")
    assert "measured on these same images" in rep.quantization.method, rep.quantization.method
