"""The resumable state of a run: checkpoint/epoch-NNNN.safetensors (weights, AdamW state, RNG
state) and resume.json naming it with its sha256, written last, so a crash at any instant
leaves a complete state that --resume can trust."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from vaekit.fileio import atomic_write_json, read_json, read_regular
from vaekit.training.metrics import history_digest
from vaekit.training.rundir import (CHECKPOINT_DIR, CONFIG, RESUME, CHECKPOINT_NAME, RunError, load_tensors,
                                   remove_strays, save_tensors)


def save_checkpoint(run_dir: Path, epoch: int, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write checkpoint/epoch-NNNN.safetensors, then resume.json naming it, then prune old ones."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    name = f"epoch-{epoch:04d}.safetensors"
    digest = save_tensors(ckpt_dir / name, tensors, state)
    pointer = {"epoch": epoch, "file": name, "sha256": digest}
    run = run_id(run_dir)
    atomic_write_json(ckpt_dir / RESUME, pointer if run is None else {**pointer, "run": run})
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
    name = pointer.get("file")
    # only a checkpoint of this run: a pointer to another folder would resume another run's state
    if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
        raise RunError(f"resume state {ckpt_dir / RESUME} is damaged: 'file' must name an epoch-NNNN.safetensors "
                       f"in {ckpt_dir}, got {name!r}")
    if pointer.get("run") != run_id(run_dir):  # a checkpoint folder copied in from another run
        raise RunError(f"the checkpoint in {ckpt_dir} belongs to another run (resume.json names run "
                       f"{pointer.get('run')}, config.json run {run_id(run_dir)}); resume the run it came from, "
                       "or start this one again with --overwrite")
    path = ckpt_dir / name
    try:
        data = read_regular(path, "checkpoint")
    except FileNotFoundError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != pointer.get("sha256"):
        raise RunError(f"checkpoint {path} is missing or does not match resume.json")
    tensors, meta = load_tensors(path, "checkpoint")
    _check_checkpoint_meta(meta, path)
    return tensors, meta


def run_id(run_dir: Path) -> str | None:
    """The id config.json gave the run when it began (None for runs written before ids, or none)."""
    try:
        value = read_json(Path(run_dir) / CONFIG, "run config").get("run_id")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _check_checkpoint_meta(meta: dict, path: Path) -> None:
    """The fields training reads back, with their types: a hand-edited file is DamagedFile."""
    def bad(what: str):
        return RunError(f"checkpoint {path} is damaged: {what}")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not count(meta.get("epoch")) or not count(meta.get("history_len")):
        raise bad("'epoch' and 'history_len' must be integers >= 0")
    best = meta.get("best")
    if not (isinstance(best, dict) and isinstance(best.get("epoch"), int) and not isinstance(best.get("epoch"), bool)
            and isinstance(best.get("val"), (int, float)) and not isinstance(best.get("val"), bool)
            and not math.isnan(best["val"])):
        raise bad("'best' must be {'epoch': integer, 'val': number}")
    groups = meta.get("param_groups")
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                        for g in groups)):
        raise bad("'param_groups' must be a list of optimizer parameter groups")
    if meta.get("scaler") is not None and not isinstance(meta["scaler"], dict):
        raise bad("'scaler' must be an object or null")


def settings_digest(model_cfg, train_cfg) -> str:
    """sha256 of the settings a checkpoint trained under that a --resume may not change (all but
    config.RESUMABLE and SESSION): config.json is read back on resume, and an edit of its seed,
    batch size or fractions between a stop and the resume was applied, unseen (a helper's review)."""
    from dataclasses import asdict

    from vaekit.config import RESUMABLE, SESSION

    train = {k: v for k, v in asdict(train_cfg).items() if k not in RESUMABLE + SESSION}
    return hashlib.sha256(json.dumps({"model": asdict(model_cfg), "train": train}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def pack_state(model, optimizer, scaler, epoch: int, best: dict, history_len: int,
               copy: bool = False, history: list[dict] | None = None, settings: str | None = None) -> tuple[dict, dict]:
    """What a checkpoint holds, (tensors, meta): the weights, the optimiser's state, the RNG states
    and the loop's bookkeeping (`settings`: settings_digest); `copy`: tensors cloned, to be
    written later (the state moves on)."""
    keep = (lambda t: t.detach().clone()) if copy else (lambda t: t)  # noqa: E731
    tensors = {f"model.{k}": keep(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = keep(v) if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = s
    meta = {
        "epoch": epoch,
        "best": best,
        "history_len": history_len,
        # names the metrics.jsonl rows (`history`) written with it: another run's file is refused on resume
        "history_sha256": None if history is None else history_digest(history[:history_len]),
        "param_groups": opt["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "settings": settings,
    }
    return tensors, meta


def resumed_history(rows: list[dict], meta: dict, path: Path) -> list[dict]:
    """The rows of metrics.jsonl (`rows`, read from `path`) the checkpoint was written with: fewer,
    or others (a file copied in from another run, or edited), is RunError rather than a history
    a resume would append to. A checkpoint from before the digest only counts them."""
    kept = rows[: meta["history_len"]]
    digest = meta.get("history_sha256")
    if len(kept) < meta["history_len"] or (digest is not None and history_digest(kept) != digest):
        raise RunError(f"{path} is not the one this run's checkpoint was written with (another run's, or edited); "
                       "--resume appends to its own metrics only: put the run's own file back, or start a new run")
    return kept


def unpack_state(tensors: dict, meta: dict, model, optimizer, scaler) -> None:
    """Put a checkpoint's state back into the model, optimiser, grad scaler and RNGs (pack_state's inverse)."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    # how the optimiser runs is this machine's choice (fused on CUDA), not the checkpoint's
    groups = [{**g, **{k: live[k] for k in ("fused", "foreach", "capturable") if k in live}}
              for g, live in zip(meta["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
