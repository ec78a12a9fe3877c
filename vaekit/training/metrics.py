"""metrics.jsonl, a run's per-epoch rows: read, written, and hashed by the same bytes (a checkpoint's
history_sha256 names them, so a resume refuses another run's file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vaekit.fileio import atomic_write_bytes, loads_json, read_regular
from vaekit.training import held
from vaekit.training.rundir import METRICS, RunError


def metrics_bytes(rows: list[dict]) -> bytes:
    """The file's bytes: one JSON object a line. The one serialisation: the file and its digest cannot drift."""
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def history_digest(rows: list[dict]) -> str:
    """sha256 of metric rows as metrics.jsonl holds them (metrics_bytes)."""
    return hashlib.sha256(metrics_bytes(rows)).hexdigest()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    try:
        for line in read_regular(path, "training metrics").decode("utf-8").splitlines():
            if line.strip():
                out.append(loads_json(line))
                if not isinstance(out[-1], dict):
                    raise ValueError(f"line {len(out)} is not a JSON object")
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too deep, not a regular file
        raise RunError(f"training metrics are corrupt ({path}): {e}") from None
    return out


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    held.require_in_place(run_dir)
    atomic_write_bytes(Path(run_dir) / METRICS, metrics_bytes(rows))
