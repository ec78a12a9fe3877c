"""Score files and heat maps: the CSV and JSON formats, the output rules, maps written batch by batch.

The writers take rows as an iterable, so a job streams them from its journal to the final file
without holding them all; the bytes are the same as writing a whole report at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.anomaly.score import ROW_FIELDS, ScoreReport, report_header
from vaekit.inference.engine import Model
from vaekit.errors import BadInput, check_flags
from vaekit.codes.targets import as_given, png_targets, refuse_linked
from vaekit.fileio import (atomic_write_bytes, atomic_writer, dumps_json, refuse_existing, refuse_inside, refuse_long_names,
                           refuse_unmakeable_folder)
from vaekit.fileio.folding import name_key
from vaekit.fileio.outputs import refuse_nul
from vaekit.inference.engine_onnx import refuse_model_files
from vaekit.stream.journals import PARTIAL_SUFFIX
from vaekit.stream.shares import MERGING

MAP_MIN_SIDE = 128  # heat maps are enlarged (nearest neighbour) to at least this many pixels
# ... unless that makes more than this many pixels: a surface reads a 1 x 25,000 strip whole at
# 24 x 600,000, which enlarged 6 times would take gigabytes; such a map keeps its own size
MAP_MAX_ENLARGED = 1 << 22


def check_outputs(inputs, out: str | Path | None = None, maps: str | Path | None = None,
                  overwrite: bool = False, model: str | Path | None = None) -> None:
    """The output rule for scoring's files, checked before any scoring: no output inside
    an input folder or in the `model`'s files (its run directory, its .onnx), and an existing
    file only replaced with `overwrite`."""
    check_flags(overwrite=overwrite)
    roots = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if out is not None:
        output_format(out)
        refuse_inside(Path(out), roots, "output")
        if model is not None:
            refuse_model_files(Path(out), model, "output")
        refuse_existing(Path(out), overwrite)
    if maps is not None:
        refuse_nul(maps, "--maps folder")
        maps = Path(maps)
        if out is not None and _takes_outputs_name(Path(out), maps):
            raise BadInput(f"--maps {maps} is the name of the output {Path(out).name} or of its journal; give the heat "
                           "maps a folder of their own")
        if maps.exists() and not maps.is_dir():
            raise BadInput(f"--maps {maps} is a file; give a folder")
        refuse_unmakeable_folder(maps, "--maps folder")
        refuse_inside(maps, roots, "--maps folder", folder=True)
        if model is not None:
            refuse_model_files(maps, model, "--maps folder")


def _takes_outputs_name(out: Path, maps: Path) -> bool:
    """Whether the heat-map folder would be OUT itself, OUT.partial, a share's journal or OUT.merging:
    the job made that folder, scored every file, then could not write OUT (or opened no journal)."""
    if os.path.realpath(maps.parent) != os.path.realpath(out.parent):
        return False
    name, base = maps.name, out.name
    return name in (base, base + PARTIAL_SUFFIX, base + MERGING) or bool(  # shares.share_out's names
        re.fullmatch(re.escape(base) + r"\.shard-\d+-of-\d+" + re.escape(PARTIAL_SUFFIX), name))


def csv_text(text: str) -> str:
    """A text cell that is safe in a CSV: valid UTF-8, and not a spreadsheet formula.

    A file name that is not UTF-8 (Linux allows any bytes) has each undecodable byte written
    as \\xNN; a cell starting with = + - @ (or a tab or carriage return) gets a leading ',
    so a spreadsheet shows it as text instead of running it (OWASP, CSV injection).
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def output_format(path: str | Path) -> str:
    """"csv" or "json" from a file name; anything else is BadInput (check before scoring)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise BadInput(f"output file must end in .csv or .json, got {Path(path).name!r}")
    return suffix[1:]


def _csv_cells(d: dict) -> list[str]:
    return ["" if d[k] is None else (str(d[k]).lower() if isinstance(d[k], bool) else
                                     (repr(d[k]) if isinstance(d[k], float) else csv_text(str(d[k]))))
            for k in ROW_FIELDS]


def rows_csv(rows: Sequence) -> str:
    """CSV text with a header of ROW_FIELDS; an absent threshold/flag is an empty cell; names
    through `csv_text`. Rows: ScoreRow or their dicts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # csv quotes a cell holding "\n" (the line end) but not one holding a carriage return, which
    # every CSV reader takes for a line end too: a file name with one split its row in two
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(ROW_FIELDS)
    for r in rows:
        cells = _csv_cells(r if isinstance(r, dict) else asdict(r))
        (quoted if any("\r" in c for c in cells) else w).writerow(cells)
    return buf.getvalue()


def write_csv_rows(f: BinaryIO, rows: Iterable[dict]) -> None:
    """`rows_csv`, streamed to a binary file a thousand rows at a time."""
    batch: list[dict] = []
    f.write(rows_csv([]).encode("utf-8"))
    for r in rows:
        batch.append(r)
        if len(batch) == 1000:
            f.write(rows_csv(batch).split("\n", 1)[1].encode("utf-8"))
            batch = []
    if batch:
        f.write(rows_csv(batch).split("\n", 1)[1].encode("utf-8"))


def _json_list(f: BinaryIO, key: str, items: Iterable[dict]) -> None:
    """`key`'s list, streamed item by item, each item's text exactly as json.dumps(indent=2) of
    the whole file lays it out (encoded at its own depth, not re-indented)."""
    head = dumps_json({key: []})[:-4]  # '{\n  "key": ' ...
    first = True
    for item in items:
        text = dumps_json({key: [item]})  # '{\n  "key": [\n    {...}\n  ]\n}'
        f.write(b"[\n" if first else b",\n")
        f.write(text[len(head) + 2 : -len("\n  ]\n}")].encode("utf-8", "surrogateescape"))
        first = False
    f.write(b"[]" if first else b"\n  ]")


def write_json_rows(f: BinaryIO, header: dict, rows: Iterable[dict], skipped: Iterable[dict]) -> None:
    """The JSON score file, streamed: `header`, then "images" and "skipped" as lists; the same
    bytes as `atomic_write_json` of the whole dict."""
    head = dumps_json(header)
    f.write(head[:-2].encode("utf-8", "surrogateescape") + b',\n  "images": ')
    _json_list(f, "images", rows)
    f.write(b',\n  "skipped": ')
    _json_list(f, "skipped", skipped)
    f.write(b"\n}\n")


def write_scores(path: str | Path, report: ScoreReport, model: Model | None = None, overwrite: bool = False) -> Path:
    """Write the rows as CSV (.csv) or JSON (.json, with the settings and skipped files); atomic.

    An existing file is replaced only with `overwrite`; never inside a scored folder."""
    check_flags(overwrite=overwrite)
    path = Path(path)
    check_outputs(report.inputs, out=path, overwrite=overwrite, model=None if model is None else model.info.source)
    rows = (asdict(r) for r in report.rows)
    with atomic_writer(path) as f:
        if output_format(path) == "csv":
            write_csv_rows(f, rows)
        else:
            write_json_rows(f, report_header(report, model), rows,
                            ({"path": str(p), "reason": r} for p, r in report.skipped))
    return path


def map_targets(names: Sequence[str], out_dir: Path | None = None, fmt: str = "png") -> list[str]:
    """Each heat map's path relative to the maps folder (posix text), named as `reconstruct` and
    `decode` name their outputs (codes.targets.png_targets): the input name with .png, or the
    whole name plus .png where different inputs would share one (a.jpg next to a.png: a.jpg.png
    and a.png.png) or where it names a folder that another input's map goes in (a.jpg next to
    a.png/b.png: a.jpg.png). What is still taken (one name in two input folders) is numbered in
    the inputs' order: a.png, a-1.png. BadInput for a name too long for a file system. `out_dir`:
    the maps folder, whose file system may take two names for one (Case.png and case.png: then
    numbered; fileio.folding); None: names are compared as they are. `fmt` "npy" (the raw maps):
    the same names with .npy for .png."""
    suffix = "." + check_map_format(fmt)
    targets = _map_targets(names, as_given, suffix)
    # numbered targets (a-1.png) are not among the names' own spellings: gate on what is written
    fold = name_key(out_dir, [*names, *targets]) if out_dir is not None else None
    return targets if fold is None else _map_targets(names, fold, suffix)


def _map_targets(names: Sequence[str], fold: Callable[[str], str], suffix: str) -> list[str]:
    used = {fold(p.as_posix()) for name in names for p in Path(name).parents}  # folders: never a map's name
    wanted = png_targets(names, fold, suffix)
    own = {fold(rel) for name, rel in zip(names, wanted) if rel == name}  # a.png's map is a.png, whoever comes first

    def taken(rel: str, name: str) -> bool:
        return fold(rel) in used or (fold(rel) in own and rel != name)

    targets = []
    for name, rel in zip(names, wanted):
        whole = name + suffix
        if taken(rel, name) and Path(name).suffix.lower() != suffix and not taken(whole, name):
            rel = whole
        base, n = rel, 1
        while taken(rel, name):
            rel, n = Path(base).with_name(f"{Path(base).stem}-{n}{suffix}").as_posix(), n + 1
        used.add(fold(rel))
        targets.append(rel)
    refuse_long_names(names, targets)
    return targets


def refuse_taken_maps(out_dir: Path, targets: Iterable[str], overwrite: bool) -> None:
    """BadInput when a heat map would replace a file, unless `overwrite`; all checked first."""
    if overwrite:
        return
    taken = [out_dir / rel for rel in targets if (out_dir / rel).exists() or (out_dir / rel).is_symlink()]
    if taken:
        raise BadInput(f"{len(taken)} heat map file(s) already exist in {out_dir} (e.g. {taken[0]}); "
                       "pass --overwrite to replace them")


MAP_FORMATS = ("png", "npy")  # a heat map over the image, or the map's own values (float32, the score's unit)


def check_map_format(fmt: str) -> str:
    if fmt not in MAP_FORMATS:
        raise BadInput(f"map format must be one of {', '.join(MAP_FORMATS)}, got {fmt!r}")
    return fmt


def save_maps(out_dir: Path, targets: Sequence[str], images: np.ndarray, maps: np.ndarray,
              alpha: float = 0.5, replace: bool = True, own: bool = False,
              digests: list[str] | None = None, fmt: str = "png") -> list[Path]:
    """One file per image: "png", its per-pixel map as a heat map over it, its shorter side enlarged
    to MAP_MIN_SIDE; "npy", the map's values as they are (float32 (H, W), numpy's .npy format).
    replace=False: none over a file (OutputExists), but with `own` one that holds this very
    map's bytes (a resumed job's own, written before its stop) is kept as it is."""
    check_map_format(fmt)
    written = []
    for rel, x, heat in zip(targets, images, maps):
        if fmt == "png":
            digest = imageio.save_png(_overlay(x, heat, alpha), out_dir / rel, replace, own)
        else:
            digest = _save_npy(heat, out_dir / rel, replace, own)
        if digests is not None:  # the journal line pins each heat map by its bytes (a resume checks them)
            digests.append(digest)
        written.append(out_dir / rel)
    return written


def _overlay(x: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    overlay = imageio.heatmap_overlay(x, heat, alpha=alpha)  # (3, H, W) uint8
    h, w = overlay.shape[1:]
    k = max(1, min(-(-MAP_MIN_SIDE // min(h, w)), math.isqrt(MAP_MAX_ENLARGED // (h * w))))  # the shorter side
    return overlay.repeat(k, axis=1).repeat(k, axis=2)


def _save_npy(heat: np.ndarray, path: Path, replace: bool, own: bool) -> str:
    """The map's values as a .npy file, atomic (as save_png); the sha256 of its bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(heat, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue(), replace, keep_same=own)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def write_maps(out_dir: str | Path, report: ScoreReport, alpha: float = 0.5, overwrite: bool = False,
               fmt: str = "png") -> list[Path]:
    """One file per image: its per-pixel anomaly map as a PNG heat map over the image, or with
    fmt="npy" the map's values (float32, the score's unit: `np.load`).

    Files mirror the input names under `out_dir` (suffix .png or .npy). A PNG's colours are scaled per
    image (0 to that image's maximum), so compare the scores, not the colours, across images. Small
    models' images are enlarged (nearest neighbour) to at least MAP_MIN_SIDE pixels; raw maps keep
    the size the model reads an image at.
    `out_dir` may not be (or be inside) a scored folder; existing files there are replaced
    only with `overwrite`, and all are checked before the first is written.
    """
    check_flags(overwrite=overwrite)
    check_map_format(fmt)
    if report.images is None or report.pixel_maps is None:
        raise BadInput("this report carries no images or maps to draw (score with maps=True)")
    out_dir = Path(out_dir)
    check_outputs(report.inputs, maps=out_dir, overwrite=overwrite)
    targets = map_targets(report.names, out_dir, fmt)
    refuse_linked(out_dir, [out_dir / t for t in targets], report.inputs, None, "--maps folder", folder=True)
    refuse_taken_maps(out_dir, targets, overwrite)
    return save_maps(out_dir, targets, report.images, report.pixel_maps, alpha, fmt=fmt)
