"""The run directory: everything a training run leaves behind, self-describing and pickle-free.

    runs/NAME/
      config.json          model + training config, data summary, versions, anomaly threshold
      model.safetensors    best-on-validation weights (what `vaekit.load` uses)
      metrics.jsonl        one JSON line per finished epoch
      preview.png          inputs | reconstructions, and samples from the prior
      checkpoint/          resume state: epoch-NNNN.safetensors + resume.json pointing at it
      .vaekit-run          marker: vaekit made this folder (runs from before it have a vaekit config.json)
      .vaekit.lock         locked by the process training here (vaekit.training.runlock), and names it

Every file is written to a temporary name and renamed. resume.json is written last and names its
checkpoint and that file's sha256, so a crash at any instant leaves a complete, verifiable state to
resume from. vaekit replaces or deletes only these files, only in a folder it made (data-safety.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save

from vaekit.version import __version__
from vaekit.config import from_stored_model
from vaekit.errors import BadInput, DamagedFile, ForeignModel, OutputExists, not_a_folder
from vaekit.images.find import RUN_FORMAT, RUN_MARKER
from vaekit.fileio import (atomic_write_bytes, atomic_write_json, loads_json, read_json, read_regular,
                           read_safetensors_header)
from vaekit.training import held

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
PREVIEW = "preview.png"
READER = "reader.safetensors"  # a surface's defect reader (vaekit.reader), when it has one
CHECKPOINT_DIR = "checkpoint"
RESUME = "resume.json"
MARKER = RUN_MARKER  # images.find passes over a folder that holds it
LOCK = ".vaekit.lock"
FORMAT = RUN_FORMAT  # config.json's "format" (images.find knows a run by it, too)
CHECKPOINT_NAME = re.compile(r"epoch-\d{4,9}\.safetensors")


class RunError(DamagedFile):
    """A run directory that is missing, corrupt, foreign or inconsistent."""


class ForeignRun(RunError, ForeignModel):
    """A folder or weights file that vaekit did not write."""


# --- which folders are vaekit's, and which files in them -----------------------------------------

def is_run_dir(path: Path) -> bool:
    """Whether vaekit made `path`: it holds the marker, or (runs written before the marker
    existed) a config.json in vaekit's run format."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    try:
        cfg = read_json(path / CONFIG, "run config")
    except (OSError, ValueError):
        return False
    return cfg.get("format") == FORMAT and isinstance(cfg.get("model"), dict)


def own_files(run_dir: Path) -> list[Path]:
    """The files vaekit writes in a run directory, as they exist now (lock file excluded)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR
    names = [run_dir / n for n in (CONFIG, WEIGHTS, METRICS, PREVIEW, READER)]
    names += [p for p in ckpt.glob("epoch-*.safetensors") if CHECKPOINT_NAME.fullmatch(p.name)] + [ckpt / RESUME]
    return [p for p in names + _strays(run_dir) if p.is_file() and not p.is_symlink()]


def refuse_blocked_names(run_dir: Path) -> None:
    """BadInput when something other than a file (a folder made by hand) stands at a name vaekit
    writes in run_dir: said before the run is cleared or trained, not at its first write after an epoch."""
    run_dir = Path(run_dir)
    for name in (CONFIG, WEIGHTS, METRICS, PREVIEW, READER, MARKER, f"{CHECKPOINT_DIR}/{RESUME}"):
        p = run_dir / name
        if p.exists() and not p.is_file():
            what = "a folder" if p.is_dir() else "not a regular file"
            raise BadInput(f"{p} is {what}, where vaekit writes the run's {name}; move it out of the run")
    if (run_dir / CHECKPOINT_DIR).exists() and not (run_dir / CHECKPOINT_DIR).is_dir():
        raise BadInput(f"--out {not_a_folder(run_dir / CHECKPOINT_DIR)}; move it out of the run")


def clear_run(run_dir: Path) -> None:
    """Delete what vaekit wrote in a run directory (for --overwrite); anything else stays."""
    for p in own_files(run_dir):
        p.unlink(missing_ok=True)
    try:
        (Path(run_dir) / CHECKPOINT_DIR).rmdir()  # only if nothing else is in it
    except OSError:
        pass


def prepare_out(out_dir: Path, overwrite: bool, write: bool = True) -> None:
    """Make `out_dir` ready for a new run, by the output rule: a missing or empty folder is
    created; a vaekit run is replaced only with `overwrite`, and then only vaekit's files go;
    a folder holding anything else is refused, with or without `overwrite`.
    write=False only makes the checks (torchrun ranks other than 0)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {not_a_folder(out_dir)}")
    if out_dir.is_dir() and any(p.name != LOCK for p in out_dir.iterdir()):
        if not is_run_dir(out_dir):
            raise BadInput(f"{out_dir} holds files vaekit did not write; give --out an empty or new folder "
                           "(vaekit never replaces files it did not create)")
        if (out_dir / CONFIG).exists() and not overwrite:
            raise OutputExists(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
        refuse_blocked_names(out_dir)
        if write:
            clear_run(out_dir)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / MARKER, {"format": FORMAT, "vaekit": __version__})


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
    unsigned = save(tensors, metadata=meta)
    meta["data_sha256"] = hashlib.sha256(unsigned[read_safetensors_header(unsigned).start:]).hexdigest()
    data = save(tensors, metadata=meta)
    held.require_in_place(path.parent, path.parent.parent)  # the run this process writes is still there
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file (never unpickles). Corrupt, altered or foreign files raise RunError."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = read_regular(path, what)
    except FileNotFoundError:
        raise RunError(f"{what} not found: {path}") from None
    try:
        header = read_safetensors_header(data)
    except ValueError as e:  # JSON errors are ValueErrors
        raise RunError(f"{what} is corrupt or not a safetensors file ({path}): {e}") from None
    meta, body = header.metadata, data[header.start:]
    if len(data) < header.end:
        raise RunError(f"{what} is truncated ({path}): {len(body)} of {header.end - header.start} bytes of weights")
    if meta.get("format") != FORMAT:
        raise ForeignRun(f"{what} was not written by vaekit ({path})")
    digest = meta.get("data_sha256")  # absent in files from before it was added
    if digest is not None and hashlib.sha256(body).hexdigest() != digest:
        raise RunError(f"{what} is damaged or was modified ({path}): its weights do not match its checksum")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise RunError(f"{what} is corrupt ({path}): {e}") from None
    try:
        extra = loads_json(meta.get("json", "{}"))
    except (ValueError, TypeError):
        raise RunError(f"{what} has corrupt metadata ({path})") from None
    if not isinstance(extra, dict):
        raise RunError(f"{what} has corrupt metadata ({path}): not a JSON object")
    return tensors, extra


def stopped_before_finish(run_dir: Path, cfg: dict) -> str | None:
    """Why a run cannot serve yet, when its training stopped (Ctrl-C, SIGTERM, a kill, a full disk)
    before the finish stored the threshold, the score's calibration and the coding tables; None for
    a finished run (and a config written by hand). Its weights load, but are not the finished model's."""
    run_dir = Path(run_dir)
    if "anomaly" in cfg or not isinstance(cfg.get("train"), dict):
        return None
    if not (run_dir / CHECKPOINT_DIR / RESUME).is_file():  # before its first checkpoint (no resume), or by hand
        return None if not (run_dir / MARKER).is_file() else (
            f"the training of {run_dir} stopped before its first checkpoint (no threshold, score calibration or "
            "coding tables stored); train it again with --overwrite")
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    images = data.get("root") if isinstance(data.get("root"), str) else "IMAGES"
    return (f"the training of {run_dir} stopped before it finished (no threshold, score calibration or coding "
            f"tables stored yet); finish it first: vaekit train {images} --out {run_dir} --resume")


def read_config(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    try:
        cfg = read_json(run_dir / CONFIG, "run config")
    except FileNotFoundError as e:
        raise RunError(f"{e} (a model is a folder written by vaekit train, or an exported .onnx)") from None
    except ValueError as e:
        raise RunError(str(e)) from None
    if cfg.get("format") != FORMAT or "model" not in cfg:
        raise ForeignRun(f"not a vaekit run directory (no vaekit config.json): {run_dir}")
    for key in ("model", "train", "data"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise RunError(f"run config {run_dir / CONFIG} is damaged: {key!r} is not a JSON object")
    if cfg.get("anomaly") is not None and not isinstance(cfg["anomaly"], dict):
        raise RunError(f"run config {run_dir / CONFIG} is damaged: 'anomaly' is not a JSON object")
    return cfg


def write_config(run_dir: Path, cfg: dict) -> None:
    held.require_in_place(run_dir)
    remove_strays(run_dir)  # written at a run's start and end: no other write is under way
    atomic_write_json(Path(run_dir) / CONFIG, {"format": FORMAT, **{k: v for k, v in cfg.items() if k != "format"}})


def remove_strays(run_dir: Path) -> None:
    """Delete the temporary files of writes a crash (SIGKILL, power loss) interrupted.

    Only one process writes a run directory, and this is called between its writes.
    """
    for stray in _strays(run_dir):
        stray.unlink(missing_ok=True)


def _strays(run_dir: Path) -> list[Path]:
    """Temporary files of vaekit's atomic writes to the run's files (.NAME.<tag>.tmp), and only
    files: a folder of that shape (an export staged in the run) was unlinked, IsADirectoryError,
    and a link was removed in place of a file."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    found = [*ckpt_dir.glob(".epoch-*.tmp"), *ckpt_dir.glob(f".{RESUME}.*.tmp"),
             *(p for own in (CONFIG, WEIGHTS, METRICS, PREVIEW, READER, MARKER) for p in run_dir.glob(f".{own}.*.tmp"))]
    return [p for p in found if p.is_file() and not p.is_symlink()]


_SHAPES: dict[tuple, dict[str, tuple[int, ...]]] = {}  # model config (each value with its type) -> shapes


def _model_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
    """The weight shapes a model config gives, built on the meta device, which allocates nothing: a
    config.json that names a huge model (latent_dim 4096, max_channels 4096) must not cost
    gigabytes before the weights file, far smaller, shows it is not the model they belong to.
    Once per config in a process: a meta build costs twice a small model's real one (~5 ms)."""
    from vaekit.model.vae import ConvVAE

    key = tuple((type(v), v) for v in dataclasses.astuple(model_cfg))  # 8.0 is not taken for 8
    if key not in _SHAPES:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in ConvVAE(model_cfg).state_dict().items()}
        if len(_SHAPES) >= 64:
            _SHAPES.clear()
        _SHAPES[key] = shapes
    return _SHAPES[key]


def load_model(run_dir: Path, device: str | torch.device = "cpu"):
    """Rebuild the ConvVAE from config.json and load the best weights. Returns (model, config)."""
    from vaekit.model.vae import ConvVAE

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    try:
        model_cfg = from_stored_model(cfg["model"])
    except (TypeError, ValueError) as e:
        raise RunError(f"run config has an invalid model section ({run_dir}): {e}") from None
    tensors, _ = load_tensors(run_dir / WEIGHTS, "model weights")
    try:
        shapes = _model_shapes(model_cfg)  # first on the meta device, before a real build
        if shapes != {k: tuple(v.shape) for k, v in tensors.items()}:
            raise RunError(f"weights do not match the config in {run_dir}: "
                           f"{_shape_difference(shapes, {k: tuple(v.shape) for k, v in tensors.items()})}")
        model = ConvVAE(model_cfg)
    except (TypeError, ValueError) as e:  # e.g. a fractional channel count
        if isinstance(e, RunError):
            raise
        raise RunError(f"run config describes a model that cannot be built ({run_dir}): {e}") from None
    except RuntimeError as e:
        raise RunError(f"run config describes a model that cannot be built ({run_dir}): {e}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RunError(f"weights do not match the config in {run_dir}: {first}") from None
    return model.to(device).eval(), cfg


def _shape_difference(want: dict, got: dict) -> str:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    k = next(k for k in sorted(want) if want[k] != got[k])
    return f"{k} has shape {list(got[k])}, the config needs {list(want[k])}"


def finished(out_dir: Path) -> bool:
    """Whether the run's finishing step (fold models, readers, thresholds, codec tables) completed
    for the weights it holds: the config it writes last names them. A resume with no epoch left
    to train then redoes nothing (it retrained every fold model, and moved the threshold)."""
    cfg = read_config(out_dir)
    anomaly = cfg.get("anomaly")
    if not isinstance(anomaly, dict) or not isinstance(anomaly.get("threshold"), (int, float)):
        return False
    try:
        return cfg.get("fingerprint") == fingerprint(load_tensors(Path(out_dir) / WEIGHTS, "model weights")[0])
    except (OSError, ValueError, RuntimeError):  # no weights, or damaged (RunError): finish again
        return False
