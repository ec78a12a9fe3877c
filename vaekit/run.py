"""The run directory: everything a training run leaves behind, self-describing and pickle-free.

    runs/NAME/
      config.json          model + training config, data summary, versions, anomaly threshold
      model.safetensors    best-on-validation weights (what `vaekit.load` uses)
      metrics.jsonl        one JSON line per finished epoch
      preview.png          inputs | reconstructions, and samples from the prior
      checkpoint/          resume state: epoch-NNNN.safetensors + resume.json pointing at it

Every file is written to a temporary name and renamed. resume.json is written last and
names its checkpoint and that file's sha256, so a crash at any instant leaves a complete,
verifiable state to resume from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save

from vaekit import __version__
from vaekit.config import ModelConfig, from_dict
from vaekit.fileio import atomic_write_bytes, atomic_write_json, read_json, split_safetensors

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
PREVIEW = "preview.png"
CHECKPOINT_DIR = "checkpoint"
RESUME = "resume.json"
FORMAT = "vaekit-run/1"


class RunError(ValueError):
    """A run directory that is missing, corrupt, foreign or inconsistent."""


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the weights: names a model exactly.

    Computed from the tensors (not the file) so the ONNX export can carry the same value.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name].detach().cpu().contiguous().numpy()
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> str:
    """Write a safetensors file atomically; return its sha256.

    The header carries the sha256 of the tensor bytes, so a file whose weights were altered
    (not only truncated) is refused on load rather than silently giving another model.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "vaekit": __version__}
    if metadata:
        meta["json"] = json.dumps(metadata)
    # the tensor bytes do not depend on the metadata, so hash them first, then write them once more
    meta["data_sha256"] = hashlib.sha256(split_safetensors(save(tensors, metadata=meta))[1]).hexdigest()
    data = save(tensors, metadata=meta)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file (never unpickles). Corrupt, altered or foreign files raise RunError."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
        header, body = split_safetensors(data)
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # JSON errors are ValueErrors
        raise RunError(f"{what} is corrupt or not a safetensors file ({path}): {e}") from None
    if len(body) < end:
        raise RunError(f"{what} is truncated ({path}): {len(body)} of {end} bytes of weights")
    if meta.get("format") != FORMAT:
        raise RunError(f"{what} was not written by vaekit ({path})")
    digest = meta.get("data_sha256")  # absent in files from before it was added
    if digest is not None and hashlib.sha256(body).hexdigest() != digest:
        raise RunError(f"{what} is damaged or was modified ({path}): its weights do not match its checksum")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise RunError(f"{what} is corrupt ({path}): {e}") from None
    try:
        extra = json.loads(meta.get("json", "{}"))
    except (json.JSONDecodeError, TypeError):
        raise RunError(f"{what} has corrupt metadata ({path})") from None
    return tensors, extra


def read_config(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    try:
        cfg = read_json(run_dir / CONFIG, "run config")
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from None
    if cfg.get("format") != FORMAT or "model" not in cfg:
        raise RunError(f"not a vaekit run directory (no vaekit config.json): {run_dir}")
    return cfg


def write_config(run_dir: Path, cfg: dict) -> None:
    remove_strays(run_dir)  # written at a run's start and end: no other write is under way
    atomic_write_json(Path(run_dir) / CONFIG, {"format": FORMAT, **{k: v for k, v in cfg.items() if k != "format"}})


def remove_strays(run_dir: Path) -> None:
    """Delete the temporary files of writes a crash (SIGKILL, power loss) interrupted.

    Only one process writes a run directory, and this is called between its writes.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    for stray in [*ckpt_dir.glob(".epoch-*.tmp"), *ckpt_dir.glob(f".{RESUME}.*.tmp"),
                  *(p for own in (CONFIG, WEIGHTS, METRICS, PREVIEW) for p in run_dir.glob(f".{own}.*.tmp"))]:
        stray.unlink(missing_ok=True)


def load_model(run_dir: Path, device: str | torch.device = "cpu"):
    """Rebuild the ConvVAE from config.json and load the best weights. Returns (model, config)."""
    from vaekit.model import ConvVAE

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    try:
        if not isinstance(cfg["model"], dict):
            raise TypeError(f"expected an object, got {cfg['model']!r}")
        model_cfg = from_dict(ModelConfig, cfg["model"])
    except (TypeError, ValueError) as e:
        raise RunError(f"run config has an invalid model section ({run_dir}): {e}") from None
    tensors, _ = load_tensors(run_dir / WEIGHTS, "model weights")
    try:
        model = ConvVAE(model_cfg)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a fractional channel count
        raise RunError(f"run config describes a model that cannot be built ({run_dir}): {e}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RunError(f"weights do not match the config in {run_dir}: {first}") from None
    return model.to(device).eval(), cfg


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunError(f"training metrics are corrupt ({path}): {e}") from None
    return out


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


# --- resumable state -------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, epoch: int, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write checkpoint/epoch-NNNN.safetensors, then resume.json naming it, then prune old ones."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    name = f"epoch-{epoch:04d}.safetensors"
    digest = save_tensors(ckpt_dir / name, tensors, state)
    atomic_write_json(ckpt_dir / RESUME, {"epoch": epoch, "file": name, "sha256": digest})
    for old in ckpt_dir.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    remove_strays(run_dir)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    try:
        pointer = read_json(ckpt_dir / RESUME, "resume state")
    except FileNotFoundError:
        raise RunError(f"nothing to resume in {run_dir}: no {CHECKPOINT_DIR}/{RESUME} (the run stopped before "
                       "its first epoch ended, or is not a training run); start it again with --overwrite") from None
    except ValueError as e:
        raise RunError(str(e)) from None
    path = ckpt_dir / str(pointer.get("file", ""))
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != pointer.get("sha256"):
        raise RunError(f"checkpoint {path} is missing or does not match resume.json")
    return load_tensors(path, "checkpoint")
