"""Checking a stored score calibration (vaekit.inference.atypicality.Calibration) before it is
used: what a damaged or hand-edited config.json or ONNX metadata section can hold."""

from __future__ import annotations


import numpy as np

from vaekit.fileio import finite_number
from vaekit.inference import codebank, frame

VERSION = 2  # the calibration section's format ("version"), as Calibration.empty writes it
COMBINES = ("max", "sumsq", "shifted", "floored")  # the rules a calibration may name (vaekit.inference.atypicality.Calibration)


def damage(stats, size: int, tests, default_tests, latent_dim: int | None = None) -> str | None:
    """What is wrong with a stored calibration section (a short phrase), or None when it is sound.
    `tests`: the test names a section may hold; `default_tests`: those of a section that names none."""
    if not isinstance(stats, dict) or not isinstance(stats.get("tests"), dict):
        return "expected an object with 'tests'"
    if stats.get("version", VERSION) != VERSION:  # vaekit 0.2's sections carry none
        return f"version {stats['version']!r:.20}; this vaekit reads version {VERSION}"
    if stats.get("combine", "max") not in COMBINES:
        return "combine"
    windows = stats.get("windows") if stats.get("local") else []
    if not (isinstance(windows, list) and len(windows) <= 8
            and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= size for w in windows)):
        return "windows"
    names = stats.get("global", list(default_tests))
    if not (isinstance(names, list) and 1 <= len(names) <= len(tests) and all(isinstance(n, str) and n in tests for n in names)
            and len(set(names)) == len(names)):
        return "global"
    if "code_far" in names:
        try:
            codebank.decode(stats.get("codes"), latent_dim)
        except ValueError as e:
            return f"codes: {e}"
    n_tests = len(names) + 4 * len(windows)
    for key in ("mean", "sd"):
        v = stats["tests"].get(key)
        # an sd of 0 divides to inf, a negative one flips every z-score: an anomaly would read as normal
        if not (isinstance(v, list) and len(v) == n_tests and all(_finite(x) and (key == "mean" or x > 0) for x in v)):
            return f"tests.{key}"
    if "frame" in stats and frame.damage(stats["frame"]):  # the frame check's range (a surface with readers)
        return frame.damage(stats["frame"])
    if "maps" in stats:  # vaekit 0.2: per position, at the model's size
        shape, table = (size, size), stats.get("maps")
    else:
        m = stats.get("margin")
        if not (isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 256):
            return "margin"
        shape, table = ((2 * m + 1) ** 2,), stats.get("profile")
    for w in windows:
        for key in ("r_map", "k_map"):
            entry = table.get(f"{key}/{w}") if isinstance(table, dict) else None
            for part in ("mean", "sd"):
                if not _good_array(entry.get(part) if isinstance(entry, dict) else None, shape, part == "sd"):
                    return f"{key}/{w}.{part}"
    return None


def _good_array(a, shape, positive: bool) -> bool:
    try:
        arr = np.asarray(a, dtype=np.float64) if isinstance(a, list) else None
    except (TypeError, ValueError):
        return False
    return arr is not None and arr.shape == shape and bool(np.isfinite(arr).all()) and not (positive and arr.min() <= 0)


def _finite(v) -> bool:
    return finite_number(v)
