"""The web app, a new user's round (h2): a run whose training was stopped before its finish, opened
in the page. `vaekit anomaly-score` refuses its default score and names the --resume; the Anomaly
tab scored it with the -ELBO against the slider's made-up threshold of 0 nats and called every
image anomalous ("2 of 2 anomalous at threshold 0.00 nats")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_hostile_inputs4 import _images, tiny_rgb_run
from test_hostile_inputs7 import stopped_copy

pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_rgb_run(tmp_path_factory.mktemp("web_h2"))


def test_the_anomaly_tab_refuses_a_run_stopped_before_its_finish(run, tmp_path):
    import vaekit
    from vaekit.errors import BadInput
    from vaekit_demo import figures, handlers

    stopped = stopped_copy(run, tmp_path / "stopped")
    model = vaekit.load(stopped)  # it opens: Compress, Generate and Latent space use its weights as they are
    assert model.info.threshold is None
    slider = figures.threshold_range(model)["value"]  # what the page sends with Score: 0.0
    src = sorted(_images(tmp_path / "src", 2).iterdir())
    with pytest.raises(BadInput, match="stopped before it finished") as e:
        handlers.anomaly(model, src, slider, tmp_path / "out")
    assert "--resume" in str(e.value) and "--score neg_elbo" not in str(e.value)  # the page has no --score
    assert not (tmp_path / "out").exists()  # no CSV of verdicts against a threshold nobody set
    r = handlers.anomaly(vaekit.load(run), src, vaekit.load(run).info.threshold, tmp_path / "out")  # a finished run scores
    assert len(r.rows) == 2 and r.csv.is_file()


def test_the_latent_tab_shows_as_many_images_as_asked_when_the_folder_has_more(run, tmp_path):
    """"At most this many images" took every ceil(n / limit)-th file: 11 images at a limit of 10 showed
    6, and 2100 at the slider's 2000 would show 1050. Now `limit` of them, spread evenly, first and last kept."""
    import vaekit
    from vaekit_demo import handlers

    folder = _images(tmp_path / "eleven", 11)
    m = handlers.latent_map(vaekit.load(run), folder, "PCA", 10)
    assert len(m.names) == 10 and m.names[0] == "img00.png" and m.names[-1] == "img10.png"
    assert len(set(m.names)) == 10
    assert len(handlers.latent_map(vaekit.load(run), folder, "PCA", 500).names) == 11  # all of a smaller folder


def test_the_train_tabs_done_says_what_the_threshold_promises(tmp_path):
    """`vaekit train` of one image prints "expected false positives at least 50% of normal images" and why;
    the Train tab said only "Done ... it is now this page's model", and the page then flagged images
    against that threshold as if it were any other."""
    import threading
    from types import SimpleNamespace

    from vaekit_demo import training

    folder = _images(tmp_path / "one", 1)
    events = list(training.train_events(folder, tmp_path / "run", 16, 4, 1, threading.Event()))
    done = events[-1]
    assert done.phase == "done"
    said = training.message(done, [], tmp_path / "run", folder, SimpleNamespace(public=lambda p: Path(p).name))
    assert said.startswith("**Done**") and "expected false positives at least 50% of normal images" in said, said
    assert "scores of the images the model trained on" in said, said


def test_the_train_tab_says_a_surfaces_loss_per_crop(tmp_path):
    """`vaekit train` says a surface's loss is per 64 px crop; the Train tab said "nats/image" (h3, 2026-12-08)."""
    import threading
    from types import SimpleNamespace

    from PIL import Image

    from vaekit.training.trainer import loss_unit
    from vaekit_demo import training

    folder = tmp_path / "large"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # few images larger than 64 px: a latent grid on 64 px crops
        Image.fromarray(rng.integers(0, 256, (96, 96), np.uint8)).save(folder / f"{i}.png")
    stop = threading.Event()
    for ev in training.train_events(folder, tmp_path / "run", 0, 4, 1, stop):
        if ev.phase == "plan":
            plan = ev.metrics
            stop.set()
    assert plan["layout"] == "grid" and loss_unit(plan["crop"]) == "nats per 64 px crop", plan
    epoch = training.TrainEvent("epoch", total=1, metrics={"epoch": 1, "train_loss": 5.0, "val_loss": 4.0})
    said = training.message(epoch, [], tmp_path / "run", folder, SimpleNamespace(public=lambda p: Path(p).name), plan)
    assert said.endswith("validation loss 4.00 nats per 64 px crop"), said


def test_messages_keep_their_slashes_when_the_data_root_is_the_root_folder():
    """With --data-root / every message lost every slash: "run config not found: workh2bademptyconfig.json",
    "need at least 3 readable images in workh2dataone", and the relative paths of a resume command too."""
    from vaekit_demo.security import public_message

    roots = [Path("/"), Path("/srv/runs"), Path("/tmp/vaekit-demo-x")]
    said = public_message("run config not found: /home/me/bad/config.json (a model is a folder)", roots)
    assert said == "run config not found: home/me/bad/config.json (a model is a folder)"
    said = public_message("finish it first: vaekit train data/vec/train --out /srv/runs/r1 --resume", roots)
    assert said == "finish it first: vaekit train data/vec/train --out srv/runs/r1 --resume"


def test_messages_name_a_path_as_the_page_shows_it(tmp_path):
    """The runs folder inside the data folder: the header showed `runs/r1` (relative to the data folder,
    what the path boxes take back) and a message `r1` (relative to the longest root), so the resume
    command it gave, run from the data folder, missed the run."""
    from vaekit_demo.security import public_message, public_path

    data = tmp_path / "data"
    roots = [data, data / "runs", tmp_path / "work"]
    for p in (data / "runs" / "r1", data / "imgs" / "a.png", tmp_path / "work" / "ab" / "s.csv"):
        assert public_message(f"see {p} now", roots) == f"see {public_path(p, roots)} now"
    assert public_path(data / "runs" / "r1", roots) == "runs/r1"


def test_compress_takes_two_uploads_of_one_name(run, tmp_path):
    """Two `a.png` from different folders: Compress refused both with "two images would be written to
    the same file ... rename one", which a page cannot do. Now the code file names them a.png and a (2).png,
    and each row shows its own upload's reconstruction."""
    import numpy as np

    import vaekit
    from vaekit_demo import handlers

    src = sorted(_images(tmp_path / "src", 2).iterdir())
    ups = []
    for i, p in enumerate(src):
        (tmp_path / f"up{i}").mkdir()
        ups.append((tmp_path / f"up{i}" / "a.png"))
        ups[-1].write_bytes(p.read_bytes())
    model = vaekit.load(run)
    r = handlers.compress(model, ups, tmp_path / "out", "q8")
    assert r.names == ["a.png", "a (2).png"]
    names, decoded = handlers.decompress(model, r.report.path)
    assert names == r.names and r.report.count == 2
    alone = handlers.compress(model, [ups[1]], tmp_path / "out")  # the second upload on its own
    assert np.array_equal(alone.pairs[0], r.pairs[1]) and not np.array_equal(r.pairs[0], r.pairs[1])
    assert ups[0].read_bytes() == src[0].read_bytes()  # the uploads untouched


def test_the_threshold_slider_can_set_a_threshold_among_defect_scores():
    """A surface's defect scores of normal images lay within 0.01 of each other (0.49-0.50); the slider ran
    from -0.5 to 3.51 in steps of 0.01, so a nudge moved the threshold past all of them."""
    from types import SimpleNamespace

    import gradio as gr

    from vaekit_demo.figures import threshold_range

    from vaekit.inference.info import ModelInfo

    def model(score, vals, threshold, reader=True):
        info = ModelInfo(16, 1, 4, "gaussian", "f", "onnxruntime", Path("m.onnx"), threshold=threshold, val_scores=vals,
                         score=score, thresholds={score: threshold, "atypicality": 21.5})
        computes = score if reader or score != "defect" else "atypicality"
        return SimpleNamespace(info=info, effective_score=lambda s, *a: (computes, None))

    rng = threshold_range(model("defect", [0.4912, 0.4950, 0.4999], 0.5056))
    assert 0 <= rng["minimum"] < 0.4912 and 0.5056 < rng["maximum"] <= 1  # a probability's range
    assert rng["step"] <= 1e-4 and (0.4999 - 0.4912) / rng["step"] >= 50
    gr.Slider(**rng)
    rng = threshold_range(model("atypicality", [1.0, 5.0, 80.0], 110.49))
    assert rng["step"] == 0.01 and rng["minimum"] < 1.0 and rng["maximum"] > 110.49  # as before
    # an export without its reader scores the atypicality: the slider at its threshold, in sd², not 0-1
    rng = threshold_range(model("defect", [0.4912, 0.4950, 0.4999], 0.5056, reader=False))
    assert rng["value"] == 21.5 and rng["maximum"] > 21.5 and "sd²" in rng["label"]
    from vaekit_demo.handlers import describe

    assert "anomaly threshold 21.50 sd² (atypicality" in describe(model("defect", [0.5], 0.5056, reader=False))
    assert "anomaly threshold 0.5056 probability" in describe(model("defect", [0.5], 0.5056))


def test_encode_vkc_names_each_uploads_file_apart(run, tmp_path):
    """a.png and a.jpg (or two a.png) were offered as downloads all named a.vkc."""
    import vaekit
    from vaekit_demo import handlers

    src = sorted(_images(tmp_path / "src", 2).iterdir())
    (tmp_path / "up").mkdir()
    ups = [tmp_path / "up" / "a.png", tmp_path / "up" / "a.bmp"]
    ups[0].write_bytes(src[0].read_bytes())
    from PIL import Image

    Image.open(src[1]).save(ups[1])
    shown, skipped = handlers.encode_vkc(vaekit.load(run), ups, tmp_path / "out", 6)
    assert [v.file.name for v in shown] == ["a.vkc", "a (2).vkc"] and not skipped


def test_a_message_path_that_only_contains_a_roots_name_is_not_cut_inside():
    """A root was replaced wherever its text occurred: /backup/data/img.png under --data-root /data
    read "backupimg.png", a file the page never had."""
    from vaekit_demo.security import public_message

    got = public_message("cannot read /backup/data/img.png nor /data/sub/b.png", [Path("/data")])
    assert got == "cannot read img.png nor sub/b.png", got


def test_a_message_path_whose_parent_ends_in_punctuation_is_not_cut_inside():
    """The root was cut after any character but a word's, a dot, ~ or /: /srv/a-/data/img.png read "a-img.png"."""
    from vaekit_demo.security import public_message

    got = public_message("cannot read /srv/a-/data/img.png nor '/data/b.png' (--data-root=/data/c.png)", [Path("/data")])
    assert got == "cannot read img.png nor 'b.png' (--data-root=c.png)", got


def test_the_page_opens_a_model_whose_calibration_is_damaged_and_the_summary_names_the_computed_unit():
    """page_score asked effective_score, which checks the calibration: a damaged one raised at Open and
    at every page load after it (the app's model was set), and `vaekit web --model` failed to build. The
    Detect summary gave the unit of the model's score (probability) where an export without its reader
    computed the atypicality (sd²)."""
    from dataclasses import replace
    from types import SimpleNamespace

    import numpy as np

    from vaekit.errors import DamagedFile
    from vaekit.inference.info import ModelInfo
    from vaekit_demo.figures import model_histogram, threshold_range
    from vaekit_demo.tabs import anomaly_summary

    info = ModelInfo(16, 1, 4, "gaussian", "f", "torch", Path("run"), threshold=9.0, val_scores=[1.0, 2.0], score="atypicality")

    def damaged(*a):
        raise DamagedFile("run: the stored score calibration is damaged")

    model = SimpleNamespace(info=info, effective_score=damaged)
    assert threshold_range(model)["value"] == 9.0 and model_histogram(model, 9.0) is not None
    r = SimpleNamespace(scores=np.array([30.0]), anomalous=np.array([True]), threshold=21.5, names=["a.png"],
                        score="atypicality", skipped=[])
    text = anomaly_summary(SimpleNamespace(info=replace(info, score="defect")), r)
    assert "sd²" in text and "probability" not in text, text
