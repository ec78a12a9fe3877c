"""What a hostile tester found in round five: stored score calibrations, the torch-free path, masks
for `evaluate`, option edges of `sample`, `reconstruct` and `threshold`, and the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export_support import exported
from test_hostile_inputs4 import _images, _one_line_error, invoke, tiny_rgb_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_rgb_run(tmp_path_factory.mktemp("inputs5"))


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".vaekit.lock"))
    return dest


# --- a stored calibration's standard deviations ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sd", [0.0, -1.0])
def test_a_stored_test_sd_that_is_not_positive_is_a_damaged_run(run, tmp_path, sd):
    # a negative sd flipped every z-score (an anomaly read as normal, exit 0); a zero one divided to inf
    edited = _copy_run(run, tmp_path / "run")
    cfg = json.loads((edited / "config.json").read_text())
    tests = cfg["anomaly"]["calibration"]["tests"]
    tests["sd"] = [sd * abs(v) if sd else 0.0 for v in tests["sd"]]
    (edited / "config.json").write_text(json.dumps(cfg))
    out = _one_line_error(invoke("anomaly-score", edited, _images(tmp_path / "imgs", 2)))
    assert "tests.sd" in out


# --- thresholds and quantiles given to the Python API as strings ----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("call", ["score_images", "evaluate", "value", "quantile", "target_fpr"])
def test_a_threshold_or_quantile_that_is_a_string_is_bad_input(run, tmp_path, call):
    # these raised TypeError ("must be real number, not str"): a bug's traceback for a caller's mistake
    import vaekit
    from vaekit import anomaly
    from vaekit.errors import BadInput

    edited = _copy_run(run, tmp_path / "run")
    before = (edited / "config.json").read_bytes()
    good, bad = _images(tmp_path / "a", 2), _images(tmp_path / "b", 2, seed=1)
    with pytest.raises(BadInput, match="got '"):
        if call == "score_images":
            anomaly.score_images(vaekit.load(edited), good, threshold="5")
        elif call == "evaluate":
            anomaly.evaluate(vaekit.load(edited), good, bad, threshold="5")
        else:
            anomaly.set_threshold(edited, **{call: "0.5"})
    assert (edited / "config.json").read_bytes() == before


# --- evaluate --masks: a mask serves one image ------------------------------------------------------

def _mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 255
    Image.fromarray(m).save(path)


@pytest.mark.slow
def test_an_anomalous_image_without_a_mask_does_not_take_another_images_mask_of_the_same_name(run, tmp_path):
    # MVTec's layout with one mask missing: hole/000.png was matched by name to crack/000's mask
    import vaekit
    from vaekit import anomaly

    normal = _images(tmp_path / "good", 3)
    for kind, seed in (("crack", 1), ("hole", 2)):
        _images(tmp_path / "test" / kind, 1, seed=seed)
        (tmp_path / "test" / kind / "img00.png").rename(tmp_path / "test" / kind / "000.png")
    _mask(tmp_path / "gt" / "crack" / "000_mask.png")
    ev = anomaly.evaluate(vaekit.load(run), normal, tmp_path / "test", masks=tmp_path / "gt")
    assert ev.n_masks == 1
    # given the crack masks alone, "000" names two anomalous images: neither is guessed
    with pytest.raises(vaekit.errors.BadInput, match="no mask in"):
        anomaly.evaluate(vaekit.load(run), normal, tmp_path / "test", masks=tmp_path / "gt" / "crack")


@pytest.mark.slow
def test_a_mask_matched_by_name_alone_still_serves_its_image(run, tmp_path):
    # the name fallback stays for a flat masks folder beside nested images with distinct names
    import vaekit
    from vaekit import anomaly

    normal = _images(tmp_path / "good", 3)
    bad = _images(tmp_path / "test" / "crack", 2, seed=1)
    _mask(tmp_path / "gt" / "img00_mask.png")
    _mask(tmp_path / "gt" / "img01.png")
    ev = anomaly.evaluate(vaekit.load(run), normal, bad.parent, masks=tmp_path / "gt")
    assert ev.n_masks == 2


# --- the torch-free path: an export's side files --------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return exported(tmp_path_factory)


def _main_file_alone(export, folder: Path) -> Path:
    folder.mkdir()
    return Path(shutil.copy(export.onnx, folder / export.onnx.name))


@pytest.mark.slow
def test_encode_without_the_encoder_file_leaves_no_journal(export, tmp_path):
    # the job failed on its first batch and left OUT.partial, so the next run was refused without --resume
    model = _main_file_alone(export, tmp_path / "m")
    images = export.digits / "test" / "normal"
    out = tmp_path / "codes" / "n.codes"
    out.parent.mkdir()
    assert "encoder.onnx is missing" in _one_line_error(invoke("encode", model, images, "-o", out))
    assert sorted(p.name for p in out.parent.iterdir()) == []
    shutil.copy(export.onnx.with_name(export.onnx.stem + ".encoder.onnx"), tmp_path / "m")
    r = invoke("encode", model, images, "-o", out)
    assert r.exit_code == 0, r.output
    assert out.is_file()


@pytest.mark.slow
def test_a_part_in_the_wrong_place_is_not_told_to_give_itself_as_the_main_file(export, tmp_path):
    # "m.encoder.onnx is the 'decoder' part ...; give the main file m.encoder.onnx" sent the user in a circle
    model = _main_file_alone(export, tmp_path / "m")
    parts = {role: export.onnx.with_name(f"{export.onnx.stem}.{role}.onnx") for role in ("encoder", "decoder")}
    shutil.copy(parts["decoder"], model.with_name(parts["encoder"].name))
    out = _one_line_error(invoke("encode", model, export.digits / "test" / "normal", "-o", tmp_path / "n.codes"))
    assert "'decoder' part" in out and "give the main file" not in out
    renamed = Path(shutil.copy(parts["encoder"], tmp_path / "enc.onnx"))
    out = _one_line_error(invoke("anomaly-score", renamed, export.digits / "test" / "normal"))
    assert "'encoder' part" in out and "give the main file enc.onnx" not in out
    out = _one_line_error(invoke("anomaly-score", parts["encoder"], export.digits / "test" / "normal"))
    assert f"give the main file {export.onnx.name}" in out


@pytest.mark.slow
def test_label_masks_of_zeros_and_ones_are_told_what_a_mask_pixel_must_be(run, tmp_path):
    # they were read as all normal, and the error said only "must mark some pixels anomalous"
    normal, bad = _images(tmp_path / "good", 3), _images(tmp_path / "bad", 2, seed=1)
    for name in ("img00", "img01"):
        m = np.zeros((20, 20), np.uint8)
        m[5:10, 5:10] = 1
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(m).save(tmp_path / "masks" / f"{name}.png")
    out = _one_line_error(invoke("evaluate", run, "--normal", normal, "--anomalous", bad, "--masks", tmp_path / "masks"))
    assert "above 127 of 255" in out
    for name in ("img00", "img01"):  # 16-bit 0/255 masks read as 0/1: the refusal said only "scale 0/1 masks" (h4)
        Image.fromarray((np.asarray(Image.open(tmp_path / "masks" / f"{name}.png")) * 255).astype(np.uint16)).save(
            tmp_path / "masks" / f"{name}.png")
    out = _one_line_error(invoke("evaluate", run, "--normal", normal, "--anomalous", bad, "--masks", tmp_path / "masks"))
    assert "a 16-bit mask is read as value / 257" in out, out


def _forged_part(real: Path, dst: Path, latent: int) -> None:
    """A decoder graph of another latent size carrying `real`'s vaekit metadata (fingerprint too)
    and a checksum made the way vaekit makes it: what an edited side file can be."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["z"], ["image"])], "forged",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", latent])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", latent])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for p in onnx.load(str(real)).metadata_props:
        model.metadata_props.add(key=p.key, value="0" * 64 if p.key == "vaekit.sha256" else p.value)
    data = model.SerializeToString()
    dst.write_bytes(data.replace(b"0" * 64, hashlib.sha256(data).hexdigest().encode()))


@pytest.mark.slow
def test_a_side_file_whose_graph_does_not_fit_the_model_is_a_damaged_file(export, tmp_path):
    # a decoder of another latent size under this model's fingerprint failed inside onnxruntime: exit 3, traceback
    model = _main_file_alone(export, tmp_path / "m")
    _forged_part(export.onnx.with_name(f"{export.onnx.stem}.decoder.onnx"),
                 model.with_name(f"{model.stem}.decoder.onnx"), latent=7)
    out = _one_line_error(invoke("sample", model, "-n", 2, "-o", tmp_path / "s.png"))
    assert "does not fit" in out and "'z': [7]" in out
    assert not (tmp_path / "s.png").exists()


@pytest.mark.slow
def test_device_cuda_without_onnxruntime_gpu_does_not_call_the_export_unreadable(export):
    # the BadInput from choosing the provider was wrapped as "not a readable ONNX model (... corrupt)"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: --device cuda is fine")
    out = _one_line_error(invoke("anomaly-score", export.onnx, export.digits / "test" / "normal", "--device", "cuda"))
    assert "onnxruntime-gpu" in out and "not a readable ONNX model" not in out


def test_an_onnx_file_larger_than_protobuf_allows_is_refused_before_it_is_read(tmp_path):
    # it was read whole into memory first: a MemoryError (exit 3, "a bug in vaekit") or the OOM killer
    import vaekit
    from vaekit.errors import DamagedFile

    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate((1 << 31) + 1)
    with pytest.raises(DamagedFile, match="too large"):
        vaekit.load(big)


# --- the metrics helpers of vaekit.anomaly, called directly -----------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda a: a.pixel_auroc(np.full((2, 4, 4), np.nan), np.eye(4, dtype=bool)[None].repeat(2, 0)), "holds NaN"),
    (lambda a: a.pixel_auroc(np.zeros((2, 4, 4)), np.eye(5, dtype=bool)[None].repeat(2, 0)), "same shape"),
    (lambda a: a.pixel_auroc("x", np.eye(4, dtype=bool)), "must be numbers"),
    (lambda a: a.image_metrics([0, 1], ["a", "b"]), "must be numbers"),
    (lambda a: a.image_metrics([0, 0.7, 1], [0.1, 0.2, 0.3]), "0 \\(normal\\) or 1"),
    (lambda a: a.image_metrics([0, 1], [0.1, 0.2], threshold=float("nan")), "finite number"),
    (lambda a: a.image_metrics([0, 1], [0.1, 0.2], threshold="x"), "finite number"),
], ids=["nan-map", "shapes", "map-text", "score-text", "label-0.7", "threshold-nan", "threshold-text"])
def test_the_metrics_helpers_refuse_bad_arrays_with_bad_input(call, message):
    # sklearn's ValueError/UFuncTypeError escaped; a label of 0.7 was silently made normal, a NaN
    # threshold flagged nothing, and maps and masks of other shapes were said to "mark no pixel"
    from vaekit import anomaly
    from vaekit.errors import BadInput

    with pytest.raises(BadInput, match=message):
        call(anomaly)


@pytest.mark.slow
def test_a_threshold_from_normal_images_in_an_array(run, tmp_path):
    # images in memory are meant to work (the copy check skips them), but each image was taken for
    # a folder and handed to Path(): TypeError
    from vaekit import anomaly

    edited = _copy_run(run, tmp_path / "run")
    x = np.stack([np.asarray(Image.open(p).resize((16, 16))).transpose(2, 0, 1)
                  for p in sorted(_images(tmp_path / "new", 4, seed=3).iterdir())])
    section = anomaly.threshold_from_normal(edited, x, quantile=0.5)
    assert section["n"] == 4
    assert json.loads((edited / "config.json").read_text())["anomaly"]["threshold"] == section["threshold"]


@pytest.mark.slow
def test_an_empty_batch_scores_to_nothing_on_a_surface_model_too(tmp_path_factory):
    # a vector model gave empty Scores; a surface model's reader raised numpy's "need at least one array"
    import vaekit
    from surface_support import train_surface

    root = tmp_path_factory.mktemp("surface5")
    folder = root / "train"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(60, 200, (48, 48), dtype=np.uint8)).save(folder / f"s{i:02d}.png")
    model = vaekit.load(train_surface(folder, root / "run", epochs=1, reader_steps=4))
    assert model.info.score == "defect"
    s = model.info.image_size
    out = model.score(np.zeros((0, model.info.channels, s, s), np.uint8))
    assert out.score.shape == (0,) and out.pixel_map.shape == (0, s, s)


# --- sample-data into a folder that holds the user's files -----------------------------------------

def test_sample_data_never_replaces_a_users_readme_or_deletes_their_images(tmp_path):
    # README.txt was replaced without a word, and --overwrite deleted every PNG of train/ and test/*
    from vaekit.errors import OutputExists
    from vaekit.sample_data import write_digits, write_shapes

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "README.txt").write_text("my notes")
    with pytest.raises(OutputExists, match="README.txt was not written by"):
        write_digits(tmp_path / "a", size=8, n_anomalous=4)
    assert (tmp_path / "a" / "README.txt").read_text() == "my notes"
    assert not (tmp_path / "a" / "train").exists()

    mine = _images(tmp_path / "b" / "train", 1)
    with pytest.raises(OutputExists, match="img00.png was not written by"):
        write_shapes(tmp_path / "b", n_train=2, n_test_normal=1, n_test_anomalous=1, size=32, overwrite=True)
    assert (mine / "img00.png").is_file()

    write_digits(tmp_path / "c", size=8, n_anomalous=4)  # its own files are replaced, with overwrite
    write_shapes(tmp_path / "c", n_train=2, n_test_normal=1, n_test_anomalous=1, size=32, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "c" / "train").iterdir()) == ["part_0000.png", "part_0001.png"]
    assert (tmp_path / "c" / "README.txt").read_text().startswith("vaekit sample data: synthetic")


def test_sample_data_tells_the_command_line_its_own_option(tmp_path):
    # the refusal said "pass overwrite=True", the Python argument, to a user of the CLI
    from vaekit.sample_data import write_digits

    write_digits(tmp_path, size=8, n_anomalous=4)
    assert "--overwrite" in _one_line_error(invoke("sample-data", "digits", tmp_path))
