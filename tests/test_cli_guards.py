"""Guards on `vaekit sample / interpolate / decode / evaluate`: a bad seed, an output that is an
input or lies in the run directory, a grid too large to hold, and labelled sets that share files
are each one line on stderr and exit 2, with nothing written or changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_codes import trained_run
from vaekit import codes
from vaekit.errors import BadInput
from vaekit_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(r, *words) -> None:
    """Exit 2, one line on stderr naming `words`, no traceback."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()  # exactly one: no blank line left by a progress bar
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory, seed=0, epochs=1)


@pytest.fixture
def pair(run, tmp_path) -> tuple[Path, Path]:
    normal = sorted((run.parent / "digits" / "test" / "normal").glob("*.png"))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(normal[0], a)
    shutil.copy(normal[1], b)
    return a, b


# --- 1. seeds ------------------------------------------------------------------------------------

def test_sample_negative_seed_is_refused(run, tmp_path):
    r = invoke("sample", run, "-n", 4, "--seed", -1, "-o", tmp_path / "s.png")
    assert r.exit_code == 2 and "Traceback" not in r.output and "non-negative" not in r.output
    assert "--seed" in r.stderr and not (tmp_path / "s.png").exists()
    assert invoke("sample", run, "-n", 4, "--seed", 0, "-o", tmp_path / "s.png").exit_code == 0


def test_train_seeds_are_refused_below_zero_and_model_sample_checks_its_arguments(run, tmp_path):
    import vaekit

    for args in (["train", tmp_path, "--out", tmp_path / "r", "--seed", -1],
                 ["sample-data", "shapes", tmp_path / "s", "--seed", -1]):
        r = invoke(*args)
        assert r.exit_code == 2 and "--seed" in r.stderr and "Traceback" not in r.output, r.output
    model = vaekit.load(run)
    with pytest.raises(BadInput, match="seed"):
        model.sample(2, seed=-1)
    with pytest.raises(BadInput, match="too many"):
        model.sample(10**9)  # refused before a single image is drawn
    assert model.sample(2, seed=3).shape[0] == 2


# --- 2. outputs that are inputs or in the run ----------------------------------------------------

def test_interpolate_never_overwrites_an_input(run, pair):
    a, b = pair
    before = a.read_bytes(), b.read_bytes()
    for target in (a, b, a.parent / "x" / ".." / "a.png"):
        refused(invoke("interpolate", run, a, b, "-o", target, "--overwrite"), "input image")
    assert (a.read_bytes(), b.read_bytes()) == before


@pytest.mark.parametrize("command", ["sample", "interpolate"])
def test_grid_never_written_into_the_run(run, pair, command):
    before = snapshot(run)
    extra = [*pair] if command == "interpolate" else []
    for name in ("grid.png", "sub/grid.png"):
        refused(invoke(command, run, *extra, "-o", run / name, "--overwrite"), "inside the model's run directory")
    assert snapshot(run) == before


def test_write_grid_refuses_its_inputs(pair):
    import numpy as np

    a, _ = pair
    before = a.read_bytes()
    with pytest.raises(BadInput, match="is the input image"):
        codes.write_grid(np.zeros((2, 1, 16, 16), np.float32), a, overwrite=True, inputs=[a])
    assert a.read_bytes() == before


def test_decode_codes_never_writes_into_the_run(run, pair, tmp_path):
    a, _ = pair
    src = a.parent / "src"
    src.mkdir()
    shutil.copy(a, src / "grid.png")  # a name a run could hold
    r = invoke("encode", run, src, "-o", tmp_path / "x.codes")
    assert r.exit_code == 0, r.output
    before = snapshot(run)
    for out in (run, run / "decoded"):
        refused(invoke("decode", run, tmp_path / "x.codes", "-o", out, "--overwrite"), "inside the model's run directory")
    refused(invoke("encode", run, src, "-o", run / "x.codes", "--overwrite"), "inside the model's run directory")
    assert snapshot(run) == before
    assert invoke("decode", run, tmp_path / "x.codes", "-o", tmp_path / "dec").exit_code == 0


# --- 3. grid size ---------------------------------------------------------------------------------

def test_huge_grids_are_refused_before_any_work(run, pair, tmp_path):
    out = tmp_path / "g.png"
    refused(invoke("sample", run, "-n", 1_000_000, "-o", out), "-n 1000000", "at most 10000")
    refused(invoke("interpolate", run, *pair, "-n", 100_000_000, "-o", out), "-n 100000000", "at most 10000")
    assert not out.exists()


def test_grid_limit_is_by_pixels():
    codes.check_grid(codes.MAX_GRID_IMAGES, 16)
    with pytest.raises(BadInput, match="at most 10000"):
        codes.check_grid(codes.MAX_GRID_IMAGES + 1, 16)
    codes.check_grid(64, 1024)  # a 1024 px model's default 64 samples
    with pytest.raises(BadInput, match="at most 64 "):
        codes.check_grid(65, 1024)
    with pytest.raises(BadInput, match="at most 256 "):
        codes.check_grid(257, 512)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(BadInput):
            codes.check_grid(bad, 16)


def test_interpolate_api_bounds_n(run, pair):
    import vaekit

    m = vaekit.load(run, device="cpu")
    with pytest.raises(BadInput, match="too many for one grid"):
        codes.interpolate(m, *pair, n=codes.MAX_GRID_IMAGES + 1)
    # a folder for a: its first two images were taken for a and b, exit 0 (a helper's review)
    for a, b in ((pair[0].parent, pair[1]), (pair[0], pair[1].parent), ("", pair[1])):
        with pytest.raises(BadInput, match="interpolate needs two image files"):
            codes.interpolate(m, a, b, n=4)


def test_decoding_into_an_empty_name_is_refused(run, pair, tmp_path, monkeypatch):
    # Path("") is the current folder: codes.decode_file and codec.decode wrote their PNGs there
    import vaekit
    from vaekit import codec

    m = vaekit.load(run, device="cpu")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(pair[0], src / "x.png")
    codes.encode_folder(m, src, tmp_path / "x.codes")
    codec.encode(m, src, tmp_path / "x.vkc", quality=3)
    monkeypatch.chdir(tmp_path / "src")
    for decode, file in ((codes.decode_file, tmp_path / "x.codes"), (codec.decode, tmp_path / "x.vkc")):
        with pytest.raises(BadInput, match="an empty name is not the current folder"):
            decode(m, file, "")
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["x.png"]


# --- 5. evaluate on sets that share files ---------------------------------------------------------

def test_evaluate_refuses_shared_images(run, tmp_path):
    test = run.parent / "digits" / "test"
    normal, anomalous = test / "normal", test / "anomalous"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(sorted(anomalous.glob("*.png"))[0], mixed / "one.png")
    (mixed / "link.png").symlink_to(sorted(normal.glob("*.png"))[0])
    hard = tmp_path / "hard"  # a hard link: the very same file under another name
    hard.mkdir()
    shutil.copy(sorted(anomalous.glob("*.png"))[0], hard / "one.png")
    os.link(sorted(normal.glob("*.png"))[1], hard / "h.png")
    for n, a in ((normal, normal), (normal, normal / ".." / "normal"), (test, anomalous), (normal, mixed), (normal, hard)):
        refused(invoke("evaluate", run, "--normal", n, "--anomalous", a), "both an anomalous and a normal image")
    r = invoke("evaluate", run, "--normal", normal, "--anomalous", anomalous, "--json")
    assert r.exit_code == 0, r.output


def test_evaluate_refuses_an_empty_masks_folder_before_scoring(run, tmp_path, monkeypatch):
    from vaekit.anomaly import evaluation

    def no_scoring(*a, **k):
        raise AssertionError("scored before refusing the masks folder")

    monkeypatch.setattr(evaluation, "iter_scored", no_scoring)
    test = run.parent / "digits" / "test"
    (tmp_path / "empty").mkdir()
    refused(invoke("evaluate", run, "--normal", test / "normal", "--anomalous", test / "anomalous",
                   "--masks", tmp_path / "empty"), "no mask in")



def test_evaluate_refuses_masks_that_are_images_it_scores(run, tmp_path, monkeypatch):
    """--masks given the anomalous (or normal) folder by mistake read each image as its own mask
    and reported a pixel AUROC as if it meant something; refused before anything is scored."""
    from vaekit.anomaly import evaluation

    monkeypatch.setattr(evaluation, "iter_scored", lambda *a, **k: pytest.fail("scored before refusing the masks"))
    test = run.parent / "digits" / "test"
    for masks in (test / "anomalous", test / "normal", test):
        refused(invoke("evaluate", run, "--normal", test / "normal", "--anomalous", test / "anomalous", "--masks", masks),
                "is both a mask and an image to score")

def test_codes_encode_refuses_names_decode_could_never_write(run, pair, tmp_path):
    """x.png, x.bmp and x.png.png would all decode to x.png.png: refused up front, as a .vkc is."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("x.png", "x.bmp", "x.png.png"):
        shutil.copy(pair[0], src / name)
    refused(invoke("encode", run, src, "-o", tmp_path / "c.codes"), "x.png.png")
    assert not (tmp_path / "c.codes").exists()


@pytest.mark.slow  # starts a pool of decoding processes
def test_a_huge_number_of_decoding_processes_is_refused_before_any_starts(run, pair):
    """A pool that forks starts all its processes at once: workers=10**6 was a fork bomb that
    took the machine's memory. Refused up front; a sane count still scores, in file order."""
    import vaekit
    from vaekit.images.load import MAX_WORKERS

    model = vaekit.load(run)
    folder = pair[0].parent
    with pytest.raises(BadInput, match="workers"):
        list(model.iter_scores(folder, workers=10**6))
    with pytest.raises(BadInput, match="workers"):
        list(model.iter_scores(folder, workers=MAX_WORKERS + 1))
    two = [s.score for s in model.iter_scores(folder, workers=2)]
    one = [s.score for s in model.iter_scores(folder, workers=0)]
    assert len(two) == len(one) and all((a == b).all() for a, b in zip(two, one))
    r = invoke("train", folder, "--out", folder / "r", "--workers", 10**6)
    assert r.exit_code == 2 and "--workers" in r.stderr


def test_unbounded_draws_threads_and_odd_model_paths_are_refused(run, pair, tmp_path):
    """--samples 10**9 asked numpy for 2 TiB ("this is a bug in vaekit"); --threads 99999 hung in
    onnxruntime's pool; load(None), an over-long path and "" (read as the current folder) were
    raw Python errors or the wrong folder. Each is BadInput now, exit 2 through the CLI."""
    import vaekit

    model = vaekit.load(run)
    with pytest.raises(BadInput, match="samples"):
        model.score(pair[0], samples=10**9)
    for bad in (None, 5, b"r", "", "x" * 5000, "a\x00b"):
        with pytest.raises(BadInput):
            vaekit.load(bad)
    with pytest.raises(BadInput, match="threads"):
        vaekit.load(run, threads=99999)
    with pytest.raises(BadInput, match="empty name"):  # not the current folder
        model.score("")
    r = invoke("anomaly-score", run, pair[0], "--samples", 10**9)
    assert r.exit_code == 2 and "--samples" in r.stderr, r.output
    r = invoke("--threads", 99999, "anomaly-score", run, pair[0])
    assert r.exit_code == 2 and "--threads" in r.stderr, r.output


def test_the_api_says_what_is_wrong_in_its_own_words(run, pair):
    """Raw TypeError / IndexError / RuntimeError from the public API, found by an attack: each a
    BadInput now, and the right kinds of value still accepted."""
    import numpy as np
    import torch

    import vaekit
    from vaekit import anomaly

    model = vaekit.load(run)
    x = model.load_images([pair[0]]).images
    for bad in (x, None, 3, b"a.png", [x[0]]):  # arrays belong to Model.score, not the folder jobs
        with pytest.raises(BadInput):
            anomaly.score_images(model, bad)
    with pytest.raises(BadInput):
        model.load_images(None)
    with pytest.raises(BadInput, match="at least one image"):
        model.elbo_parts(x[:0])
    with pytest.raises(BadInput):
        model.encode(torch.rand(1, *x.shape[1:], requires_grad=True))
    with pytest.raises(BadInput, match="iwae"):
        model.score(x, samples=2, iwae="yes")
    with pytest.raises(BadInput, match="temperature"):
        model.sample(2, temperature=1e300)
    assert model.sample(2, temperature=np.float32(0.5), seed=1).shape[0] == 2
    assert len(anomaly.score_images(model, (str(pair[0]), pair[1])).rows) == 2  # a tuple of paths is fine


def test_a_run_directory_named_as_the_images_is_refused_and_one_inside_a_folder_passed_over(run, pair, tmp_path):
    """A run's preview.png passed for one image: `train RUN` trained on it, `anomaly-score RUN RUN`
    scored it. Named as the images, a run is refused (exit 2, nothing written); inside a folder of
    images it is passed over, so its preview is never taken for one of them."""
    before = snapshot(run)
    r = invoke("train", run, "--out", tmp_path / "new", "--epochs", 1)
    refused(r, "is a vaekit run directory", "not a folder of images")
    assert not (tmp_path / "new").exists()
    r = invoke("anomaly-score", run, run, "-o", tmp_path / "s.csv")
    refused(r, "is a vaekit run directory")
    assert not (tmp_path / "s.csv").exists() and snapshot(run) == before
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(pair[0], folder / "a.png")
    shutil.copytree(run, folder / "old_run")
    from vaekit.images import find_images
    from vaekit.stream import find_inputs

    assert [p.name for p in find_images(folder)] == ["a.png"]
    assert find_inputs(folder).names == ["a.png"]
    # a run from before the marker: known by its config.json's format
    (folder / "old_run" / ".vaekit-run").unlink()
    assert [p.name for p in find_images(folder)] == ["a.png"]
    r = invoke("threshold", run, "--normal", folder / "old_run")
    refused(r, "is a vaekit run directory")


def test_a_folder_whose_config_json_is_anything_else_is_still_a_folder_of_images(pair, tmp_path):
    """Runs from before the marker are known by their config.json; anyone else's config.json, even
    one nested past Python's recursion limit, leaves the folder a folder of images."""
    from vaekit.images import find_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(pair[0], folder / "a.png")
    for text in ("[" * 100_000 + "]" * 100_000, '{"format": "something-else/1"}', "not json", '["a list"]'):
        (folder / "config.json").write_text(text)
        assert [p.name for p in find_images(folder)] == ["a.png"]
        assert folder / "a.png" in find_images(tmp_path)  # and inside a folder it is scanned
