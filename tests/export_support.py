"""Shared by test_export.py and test_engine_onnx.py: one tiny trained run and its ONNX export,
built once per test session (the dynamo trace is the slow part, ~5-10 s on two shared cores)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

_BUILT: dict[str, object] = {}


@dataclass
class Exported:
    run: Path  # a trained run directory (16 px digits, latent 4)
    onnx: Path  # its export's main file; .encoder.onnx and .decoder.onnx lie beside it
    digits: Path  # the sample data: train/, test/normal/, test/anomalous/
    report: object  # the vaekit.export.ExportReport


def exported(tmp_path_factory) -> Exported:
    if "main" not in _BUILT:
        from vaekit.config import ModelConfig, TrainConfig
        from vaekit.export import export
        from vaekit.sample_data import write_digits
        from vaekit.train import train

        root = tmp_path_factory.mktemp("onnx-export")
        write_digits(root / "digits", size=16, n_anomalous=12)
        # beta 0.1: three epochs at beta 1 collapse the posterior (KL ~0.003 nats), and a wrong KL
        # in the exported graph would then hide under any absolute tolerance; here KL is ~1 nat
        train(root / "digits" / "train", root / "run", ModelConfig(image_size=16, latent_dim=4, base_channels=8, likelihood="bernoulli"),
              TrainConfig(epochs=3, lr=5e-3, beta=0.1, device="cpu"), cache_dir=root / "cache")
        report = export(root / "run", root / "export" / "digits.onnx")
        _BUILT["main"] = Exported(root / "run", root / "export" / "digits.onnx", root / "digits", report)
    return _BUILT["main"]  # type: ignore[return-value]


def random_run(out: Path, **model) -> Path:
    """A run directory holding an untrained ConvVAE (no training, no threshold): enough for parity."""
    import torch

    from vaekit.training import rundir
    from vaekit.config import ModelConfig
    from vaekit.model.vae import ConvVAE

    torch.manual_seed(0)
    cfg = ModelConfig(**model)
    net = ConvVAE(cfg).eval()
    if net.log_scale is not None:  # not the initial zeros, so a lost sigma would show
        net.log_scale.data[:] = torch.linspace(-1.0, -0.5, cfg.channels)
    rundir.save_tensors(out / rundir.WEIGHTS, net.state_dict())
    rundir.write_config(out, {"model": asdict(net.cfg), "fingerprint": rundir.fingerprint(net.state_dict())})
    return out


def random_job(root: Path, n_images: int) -> tuple[Path, Path]:
    """(run, folder): an untrained 16 px grey model (`random_run`) and `n_images` images of noise
    for it, img000.png ...: what a streaming job's tests need when detection is not the point."""
    import numpy as np
    from PIL import Image

    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(data / f"img{i:03d}.png")
    return run, data


def interrupt() -> None:
    """An action for acting_model: the Ctrl-C that stops a job."""
    raise KeyboardInterrupt


def acting_model(run, method: str, at: int, action):
    """vaekit.load(run) whose `method` (score, encode, reconstruct) calls `action()` as its call
    number `at` begins (1-based), before the real call; an action that raises stops the job there."""
    import vaekit

    model, calls = vaekit.load(run), []
    real = getattr(model, method)

    def acting(x, **kw):
        calls.append(len(x))
        if len(calls) == at:
            action()
        return real(x, **kw)

    setattr(model, method, acting)
    return model


def stopped_job(run, data, out, maps=None, after: int = 3, **kw) -> Path:
    """OUT.partial of an anomaly-score job stopped (Ctrl-C) in its batch `after` + 1: it holds
    `after` batches. `kw` goes to anomaly.score_to_file (overwrite=True over an earlier output)."""
    import pytest

    import vaekit
    from vaekit import anomaly

    model, calls = vaekit.load(run), []
    real = model.score

    def dying(x, **kw):
        calls.append(len(x))
        if len(calls) == after + 1:
            raise KeyboardInterrupt
        return real(x, **kw)

    model.score = dying
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, **kw)
    return Path(f"{out}.partial")


def stopped_reconstruct(run, data, out, after: int) -> None:
    """A reconstruct job into folder `out` stopped (Ctrl-C) in its batch `after` + 1 (batches of
    4 files): its journal holds `after` batches."""
    import pytest

    import vaekit
    from vaekit.inference.reconstruct import reconstruct_to_folder

    model, calls = vaekit.load(run), []
    real = model.reconstruct

    def dying(x):
        calls.append(len(x))
        if len(calls) == after + 1:
            raise KeyboardInterrupt
        return real(x)

    model.reconstruct = dying
    with pytest.raises(KeyboardInterrupt):
        reconstruct_to_folder(model, data, out, batch_size=4)


BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def run_without_torch(code: str, timeout: float = 120):
    """Run `code` in a fresh Python in which any import of torch fails (the runtime install's
    situation): the finished subprocess, its output captured as text."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=timeout)
