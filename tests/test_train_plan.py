"""`vaekit train` says what it will train, with every "auto" decided, before the first step."""

from typer.testing import CliRunner

from test_train import make_blobs
from vaekit.training.loop import plan_text
from vaekit_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_prints_its_plan_before_the_first_epoch_and_again_on_resume(tmp_path):
    make_blobs(tmp_path / "imgs", n=12)
    r = invoke("--threads", 1, "train", tmp_path / "imgs", "--out", tmp_path / "run", "--image-size", 16,
               "--latent-dim", 4, "--base-channels", 4, "--epochs", 2, "--batch-size", 4, "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    plan = [i for i, line in enumerate(lines) if line.startswith("training 12 images")]
    assert len(plan) == 1 and plan[0] < next(i for i, line in enumerate(lines) if line.startswith("epoch   1"))
    assert ("training 12 images (5 folds, cross-fitted) · 16 px, vector latent (4), "
            "gaussian · 2 epochs, batch 4, warped copies · cpu") in lines[plan[0]]  # under 50 aligned images: warped
    r = invoke("--threads", 1, "train", tmp_path / "imgs", "--out", tmp_path / "run", "--resume", "--epochs", 3)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith("resuming after epoch 2 of 3: 12 images (5 folds")


def _plan(**kw) -> dict:
    base = {"images": 1000, "train": 800, "val": 100, "cal": 100, "folds": 0, "image_size": 32, "reads_at": 32,
            "layout": "vector", "latent_dim": 16, "likelihood": "bernoulli", "crop": None, "epochs": 20,
            "batch_size": 64, "augment": "off", "readers": 0, "device": "cuda:0"}
    return {**base, **kw}


def test_the_plan_names_the_splits_the_model_and_the_readers():
    assert plan_text(_plan()) == ("1000 images (800 train, 100 validation, 100 calibration) · 32 px, vector latent "
                                  "(16), bernoulli · 20 epochs, batch 64 · cuda:0")
    surface = _plan(images=40, train=32, val=0, cal=8, image_size=64, reads_at=256, layout="grid", latent_dim=8,
                    likelihood="gaussian", crop=64, epochs=300, batch_size=32, readers=3, device="cpu")
    assert plan_text(surface) == ("40 images (32 train, 8 held out) · surface at 256 px, latent grid (8 per cell) "
                                  "trained on 64 px crops, gaussian · 300 epochs, batch 32 · then 3 defect readers · cpu")
    one = plan_text({**surface, "readers": 1, "crop": None, "reads_at": 64, "augment": "on"})
    assert one.endswith("surface at 64 px, latent grid (8 per cell), gaussian · 300 epochs, batch 32, warped copies · "
                        "then 1 defect reader · cpu")
