"""What the plan line says about the training images' pixels (vaekit.training.coverage): exact
copies, which make the threshold promise too little, and images too dark to hold more than a few
grey levels (12-bit camera data in 16-bit files, read as value / 257)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def test_survey_counts_exact_copies_and_the_brightest_pixel_across_chunks(monkeypatch):
    from vaekit.training import coverage

    monkeypatch.setattr(coverage, "CHUNK", 3)  # copies found across chunk borders too
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, (10, 1, 8, 8), dtype=np.uint8)
    assert coverage.survey(x) == (0, int(x.max()))
    x[7] = x[1]
    x[9] = x[1]
    x[8] = x[2]
    x[4, 0, 3, 3] = 250
    assert coverage.survey(x) == (3, 250)
    almost = x.copy()
    almost[9, 0, 0, 0] ^= 1  # one grey level apart: not a copy
    assert coverage.survey(almost)[0] == 2


def test_the_notes_name_copies_and_dark_images_and_stay_quiet_otherwise():
    from vaekit.training.coverage import pixel_notes

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 1, 16, 16), dtype=np.uint8)
    assert pixel_notes(x) == []
    x[5] = x[0]
    (note,) = pixel_notes(x)
    assert note.startswith("1 of 20 images are exact copies of another (as the model sees them, at 16 px)")
    dark = (rng.random((20, 1, 16, 16)) * 16).astype(np.uint8)  # 12-bit data read as 16-bit: 0 to 15
    (note,) = pixel_notes(dark)
    assert note.startswith(f"the brightest pixel of all 20 images is {dark.max()} of 255, so the model sees at most "
                           f"{dark.max() + 1} grey levels")
    assert pixel_notes(np.full((3, 1, 4, 4), 65, np.uint8)) == ["2 of 3 images are exact copies of another (as the "
                                                                 "model sees them, at 4 px): a copy held out for the "
                                                                 "threshold while its twin trains is an image the model "
                                                                 "knows, so the threshold comes out too low and flags more "
                                                                 "new normal images than it promises; remove the copies"]


def test_full_range_14_bit_data_in_16_bit_files_is_noted_too(tmp_path):
    """A 16-bit file is read as rint(value / 257): 14-bit data at full scale (16383) is 64, which a
    bound of 63 left unsaid."""
    from vaekit.images.read import load_image
    from vaekit.training.coverage import pixel_notes

    a = np.zeros((16, 16), np.uint16)
    a[4:12, 4:12] = 16383
    Image.fromarray(a).save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png", 16, 1)
    assert int(x.max()) == 64
    images = np.stack([x, x // 2, x // 3])
    assert any(n.startswith("the brightest pixel of all 3 images is 64 of 255") for n in pixel_notes(images))


@pytest.mark.slow  # trains a model
def test_vaekit_train_prints_both_notes_under_its_plan_line(tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    rng = np.random.default_rng(2)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(24):  # 12-bit data in 16-bit PNGs, and four files twice
        a = (rng.random((32, 32)) * 4095).astype(np.uint16)
        Image.fromarray(a).save(images / f"p{i:02d}.png")
        if i < 4:
            Image.fromarray(a).save(images / f"p{i:02d}_again.png")
    r = CliRunner().invoke(app, ["--threads", "1", "train", str(images), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--layout", "grid", "--no-reader", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "note: 4 of 28 images are exact copies of another (as the model sees them, at 32 px)" in text
    assert "note: the brightest pixel of all 28 images is 16 of 255, so the model sees at most 17 grey levels" in text
    assert text.index("training 28 images") < text.index("note: 4 of 28") < text.index("epoch 1")


def test_the_web_apps_train_tab_says_the_plans_notes_under_every_message_after_it(tmp_path):
    """The Train tab showed the plan line and then replaced it with each epoch's: the notes
    `vaekit train` prints under its plan line were never seen in the app."""
    from types import SimpleNamespace

    from vaekit_demo import training
    from vaekit_demo.training import TrainEvent

    ctx = SimpleNamespace(public=lambda p: str(p))
    plan = TrainEvent("plan", 0, 3, {"images": 3, "train": 2, "val": 0, "cal": 1, "folds": 0, "image_size": 16,
                                     "reads_at": 16, "layout": "vector", "channels": 1, "latent_dim": 4,
                                     "likelihood": "gaussian", "crop": None, "epochs": 3, "batch_size": 2,
                                     "augment": "off", "readers": 0, "device": "cpu",
                                     "notes": ["1 of 3 images are exact copies of another"]})
    epoch = TrainEvent("epoch", 1, 3, {"epoch": 1, "train_loss": 2.0, "val_loss": 2.0})
    for ev in (plan, epoch):
        said = training.message(ev, [], tmp_path / "run", tmp_path, ctx, plan.metrics)
        assert said.endswith("\n\n**Note**: 1 of 3 images are exact copies of another"), said
    assert "**Note**" not in training.message(epoch, [], tmp_path / "run", tmp_path, ctx)


@pytest.mark.slow  # builds the web app
def test_the_train_tab_passes_the_plans_notes_from_the_training_to_its_messages(tmp_path, monkeypatch):
    """Through the app's own Train handler: the notes a plan event carries reach the page's status
    under the plan and under the epochs that follow it."""
    from types import SimpleNamespace

    from vaekit.training import job
    from vaekit_demo.app import build_app

    plan = {"images": 3, "train": 2, "val": 0, "cal": 1, "folds": 0, "image_size": 16, "reads_at": 16,
            "layout": "vector", "channels": 1, "latent_dim": 4, "likelihood": "gaussian", "crop": None, "epochs": 1,
            "batch_size": 2, "augment": "off", "readers": 0, "device": "cpu", "skipped": [],
            "notes": ["2 of 3 images are exact copies of another"]}

    def planned_then_stopped(folder, out_dir, model_cfg, train_cfg, channels, progress, should_stop, confine_to):
        progress(0, 1, phase="plan", finished=False, **plan)
        progress(1, 1, phase="epoch", epoch=1, epochs=1, train_loss=1.0, val_loss=1.0)
        return SimpleNamespace(stopped=True), None

    monkeypatch.setattr(job, "train", planned_then_stopped)
    (tmp_path / "data" / "images").mkdir(parents=True)
    app = build_app(None, runs_dir=tmp_path / "data" / "runs", workdir=tmp_path / "work", data_root=tmp_path / "data")
    train = next(f.fn for f in app.fns.values() if f.api_name == "train")
    said = [o[0] for o in train("images", 16, 2, 1, request=SimpleNamespace(session_hash="p"),
                                progress=lambda *a, **k: None)]
    assert said[0].startswith("Training") and "1 epoch" in said[0]
    assert all(s.endswith("**Note**: 2 of 3 images are exact copies of another") for s in said), said


def test_the_16_bit_explanation_comes_only_with_16_bit_files(tmp_path):
    """A folder of dark 8-bit images is told it is dark, not that its 16-bit files are read / 257."""
    from vaekit.training.coverage import pixel_notes

    rng = np.random.default_rng(3)
    dark = rng.integers(0, 40, (4, 1, 16, 16), dtype=np.uint8)
    eight, sixteen = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(dark[0, 0]).save(eight)
    Image.fromarray((dark[0, 0].astype(np.uint16) * 257)).save(sixteen)
    (plain,) = pixel_notes(dark, [eight])
    assert plain.endswith(f"so the model sees at most {dark.max() + 1} grey levels"), plain
    (told,) = pixel_notes(dark, [eight, sixteen])
    assert told.startswith(plain) and "a 16-bit file is read as value / 257" in told


def test_a_folder_stored_mostly_grey_is_told_when_a_few_colour_files_make_the_model_rgb(tmp_path):
    """One colour file among grey ones made `--channels auto` train an RGB model (a .vkc ~1.6x the
    grey model's, decoded with a tint) and nothing said so (h7)."""
    from vaekit.training.coverage import colour_note

    rng = np.random.default_rng(4)
    paths = []
    for i in range(9):
        paths.append(tmp_path / f"g{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(paths[-1])
    paths.append(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    note = colour_note(paths, "auto", 3)
    assert note.startswith("1 of 10 images are stored in colour and the rest grey, so the model is RGB"), note
    assert colour_note(paths, 3, 3) is None and colour_note(paths, "auto", 1) is None  # asked for, or grey
    assert colour_note(paths[-1:] * 3 + paths[:2], "auto", 3) is None  # mostly colour: RGB is what they are
    assert colour_note(paths[:9], "auto", 3) is None


def test_12_bit_files_among_8_bit_ones_are_noted_too(tmp_path):
    """The dark note looked at the brightest pixel of all images: one 8-bit preview among 150
    12-bit PNGs (read as value / 257: 0 to 16) silenced it, and the 12-bit images trained on 17
    grey levels unsaid (h3: AUROC 0.56 against 0.69 for the same images at 8 bits)."""
    from vaekit.images.read import load_image
    from vaekit.training.coverage import pixel_notes

    rng = np.random.default_rng(3)
    paths = []
    for i in range(9):
        Image.fromarray((rng.random((16, 16)) * 4095).astype(np.uint16)).save(tmp_path / f"p{i}.png")
        paths.append(tmp_path / f"p{i}.png")
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "preview.png")
    paths.append(tmp_path / "preview.png")
    images = np.stack([load_image(p, 16, 1) for p in paths])
    assert images[-1].max() > 64 and images[:-1].max() <= 16
    notes = pixel_notes(images, paths)
    assert any(n.startswith("9 of 10 images have no pixel brighter than 64 of 255") and "value / 257" in n
               for n in notes), notes
    # 8-bit files, a few of them dark (night shots): no 16-bit file, nothing said
    eight = [tmp_path / f"e{i}.png" for i in range(10)]
    for i, p in enumerate(eight):
        Image.fromarray((rng.random((16, 16)) * (40 if i < 5 else 255)).astype(np.uint8)).save(p)
    assert pixel_notes(np.stack([load_image(p, 16, 1) for p in eight]), eight) == []


def test_jpeg_files_named_jfif_or_jpe_are_images(tmp_path):
    """Browsers save JPEGs as .jfif, old cameras as .jpe: such files were neither read nor named as
    skipped (h3), so a folder of them was "no image files found"."""
    from vaekit.images import find_images, load_images

    for i, suffix in enumerate((".jfif", ".JPE", ".jpg")):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(tmp_path / f"a{i}{suffix}", "JPEG")
    found = find_images(tmp_path)
    assert sorted(p.name for p in found) == ["a0.jfif", "a1.JPE", "a2.jpg"]
    assert len(load_images(found, 16, 3).images) == 3
