"""`vaekit train` says what it will train, with every "auto" decided, before the first step
(the line itself through the CLI: tests/test_cli_train.py)."""

from vaekit.training.loop import plan_text


def _plan(**kw) -> dict:
    base = {"images": 1000, "train": 800, "val": 100, "cal": 100, "folds": 0, "image_size": 32, "reads_at": 32,
            "layout": "vector", "latent_dim": 16, "likelihood": "bernoulli", "crop": None, "epochs": 20,
            "batch_size": 64, "augment": "off", "readers": 0, "device": "cuda:0", "channels": 1}
    return {**base, **kw}


def test_the_plan_names_the_splits_the_model_and_the_readers():
    assert plan_text(_plan()) == ("1000 images (800 train, 100 validation, 100 calibration) · 32 px gray, vector "
                                  "latent (16), bernoulli · 20 epochs, batch 64 · cuda:0")
    surface = _plan(images=40, train=32, val=0, cal=8, image_size=256, reads_at=256, layout="grid", latent_dim=8,
                    likelihood="gaussian", crop=64, epochs=300, batch_size=32, readers=3, device="cpu", channels=3)
    assert plan_text(surface) == ("40 images (32 train, 8 held out) · 256 px RGB, latent grid (8 per cell) "
                                  "trained on 64 px crops, gaussian · 300 epochs, batch 32 · then 3 defect readers · cpu")
    one = plan_text({**surface, "readers": 1, "crop": None, "image_size": 64, "reads_at": 64, "augment": "on"})
    assert one.endswith("· 64 px RGB, latent grid (8 per cell), gaussian · 300 epochs, batch 32, warped copies · "
                        "then 1 defect reader · cpu")
    # larger than the network: read whole, in tiles of its size, as the summary says (the plan said "3000 px" alone)
    big = plan_text({**surface, "image_size": 1024, "reads_at": 3000})
    assert "· 3000 px RGB in 1024 px tiles, latent grid (8 per cell) trained on 64 px crops, gaussian ·" in big
