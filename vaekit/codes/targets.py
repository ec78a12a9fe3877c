"""Where decode and reconstruct write each image, and the check of every target before the first.

An output is named after its source with a .png suffix (`png_names`); `decodable` refuses, at
encode time, sources whose outputs decode could never write apart; `check_targets` refuses, before
anything is written, an output folder where a file stands in the way of a folder an image needs, or
a folder in the way of an image.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from vaekit.errors import BadInput, not_a_folder
from vaekit.fileio import refuse_existing, refuse_long_names, refuse_unmakeable_folder
from vaekit.fileio.folding import FOLDED, name_key
from vaekit.fileio.outputs import MAX_PATH_BYTES

STAGED_BYTES = 64  # what a target's path gains while written: /.vaekit-decode-PID-TOKEN and a temporary name


def png_targets(names: Sequence[str], key: Callable[[str], str] | None = None, suffix: str = ".png") -> list[str]:
    """Each name with a .png suffix ("a/b.jpg" -> "a/b.png"), except where different names would
    share one ("a.jpg", "a.png"): those keep their whole name ("a.jpg.png", "a.png.png"), so the
    output says whose it is. The same name twice (one name in two input folders) keeps its one
    target: `png_names` refuses it, heat maps number it. `key`: how the output folder tells
    names apart where it folds case or accents (fileio.folding.name_key); None: as they are.
    `suffix`: another than .png (raw heat maps: .npy), by the same rule."""
    key = key or as_given
    first = [PurePosixPath(n).with_suffix(suffix).as_posix() for n in names]
    sources: dict[str, set[str]] = {}
    for n, f in zip(names, first):
        sources.setdefault(key(f), set()).add(n)

    def target(n: str, f: str) -> str:
        group = sources[key(f)]
        if len(group) == 1 or sum(key(m) == key(n) for m in group) > 1:  # folded, the whole names meet too
            return f
        return n + suffix

    return [target(n, f) for n, f in zip(names, first)]


def as_given(name: str) -> str:
    """A name as it is: the key of a file system that tells every two names apart."""
    return name


def png_names(names: Sequence[str], out_dir: Path | None = None) -> list[str]:
    """Output file names: each source name with a .png suffix ("a/b.jpg" -> "a/b.png").

    Two sources that would share a name ("a.jpg", "a.png") keep their whole name ("a.jpg.png").
    BadInput when two would still meet, when one output would be the folder of another
    ("x.jpg" -> x.png, and "x.png/y.png"), or when a name would be too long for a file system.
    `out_dir`: where they go, whose file system may take two names for one (Case.png, case.png:
    fileio.folding); None: names are compared as they are.
    """
    key = name_key(out_dir, names) if out_dir is not None else None
    out = png_targets(names, key)
    keyed = [key(o) for o in out] if key else out
    seen: dict[str, tuple[str, str]] = {}
    for n, o, k in zip(names, out, keyed):
        if k in seen and o != seen[k][1]:
            raise BadInput(f"the images {seen[k][0]!r} and {n!r} would be written to one file: {Path(out_dir)} "
                           f"holds {seen[k][1]!r} and {o!r} as one, {FOLDED}; write to a folder on another disk")
        if k in seen:
            raise BadInput(f"two images would be written to the same file {o!r}")
        seen[k] = n, o
    refuse_long_names(names, out)
    folders = {(key or as_given)(str(p)): n for n, o in zip(names, out) for p in PurePosixPath(o).parents if str(p) != "."}
    for n, o, k in zip(names, out, keyed):
        if k in folders:
            raise BadInput(f"the image {n!r} would be written to the file {o!r}, which the image {folders[k]!r} "
                           "needs as a folder")
    return out


def decodable(names: Sequence[str], source) -> None:
    """Refuse names that decode could never write: it names each output after its source with a
    .png suffix, the whole name where two would share one (`png_names`), and x.png, x.bmp and
    x.png.png would still meet at x.png.png, as x.jpg (to x.png) and x.png/y.png would at the
    folder x.png. A name must be a plain relative path without a backslash
    (codes.format.check_name, which decode applies): one that is not would make an archive that
    decodes nothing, so it is refused before anything is encoded."""
    from vaekit.codes.format import CodeFileError, check_name

    if not isinstance(source, (str, os.PathLike)):  # a list of files (the web app's uploads) was printed as [PosixPath(...)]
        source = f"{len(source)} files" if len(source) != 1 else str(source[0])
    for name in names:
        try:
            check_name(name)
        except CodeFileError:
            raise BadInput(f"cannot encode {source}: the file name {name!r} holds a backslash, begins like a Windows "
                           f"drive ('a:') or is not a plain relative path, which decode would refuse to write back; "
                           f"rename it or move it out of the folder") from None
    try:
        png_names(names)
    except BadInput as e:
        raise BadInput(f"cannot encode {source}: {e} when decoded (decode writes each image to its name with "
                       f"a .png suffix, or its whole name plus .png where two share one); rename one of them") from None


def check_targets(out_dir: Path, targets: Sequence[Path], overwrite: bool, inputs=(), model=None,
                  folder: bool = False, source: Path | None = None) -> None:
    """Every check of the files a job will write under `out_dir`, before the first is written:
    no file above or in place of a folder they need, no folder where one must go, no folder there
    that a link takes into an input folder or the `model`'s run (`refuse_linked`), none that is
    the file the job reads (`source`, decode's code file), and (without `overwrite`) none there
    already. BadInput (OutputExists) naming the path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} exists and is not a folder")
    refuse_unmakeable_folder(out_dir)
    needed: dict[Path, Path] = {}
    for t in targets:
        for p in Path(t).parents:
            if p == out_dir or p in needed:
                break
            needed[p] = t
    for folder in sorted(needed, key=lambda p: len(p.parts)):
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise BadInput(f"cannot write {needed[folder]}: {not_a_folder(folder)}; move it away")
    for t in targets:  # as written: inside decode's staging folder, under a temporary name (ENAMETOOLONG, exit 3)
        if len(os.fsencode(str(t))) + STAGED_BYTES > MAX_PATH_BYTES:
            raise BadInput(f"cannot write {str(t)[:60]!r}...: its path of {len(os.fsencode(str(t)))} bytes, written "
                           f"through a staging folder, would pass {MAX_PATH_BYTES} bytes (the longest path Linux takes); "
                           "write into a folder with a shorter path")
    for t in targets:
        if Path(t).is_dir():
            raise BadInput(f"cannot write {t}: a folder of that name is in the way; move it away")
    refuse_linked(out_dir, targets, inputs, model, "output folder", folder)
    if source is not None and overwrite:  # `decode x.png -o . --overwrite` replaced the archive by its own PNG (h2)
        _refuse_source(targets, Path(source))
    refuse_existing(targets, overwrite)


def _refuse_source(targets: Sequence[Path], source: Path) -> None:
    try:
        read = os.stat(source)
    except OSError:
        return
    for t in targets:
        try:
            here = os.lstat(t)
        except OSError:
            continue
        if os.path.samestat(here, read):
            raise BadInput(f"cannot write {t}: it is the file being decoded; write into another folder")


def refuse_linked(out_dir: Path, targets: Sequence[Path], inputs, model, what: str, folder: bool = False) -> None:
    """BadInput when a folder below `out_dir` that a target goes in, and that is there already,
    lies in an input folder (refuse_inside) or the `model`'s run (refuse_model_files): `out_dir`
    itself is checked by the caller, but through a link in it (`OUT/sub -> IMGS/sub`)
    `reconstruct --overwrite` replaced input images with their reconstructions, `anomaly-score
    --maps --overwrite` with their heat maps, and `decode` wrote into the run."""
    from vaekit.fileio import refuse_inside
    from vaekit.inference.engine_onnx import refuse_model_files

    out_dir, seen = Path(out_dir), set()
    for t in targets:
        for f in Path(t).parents:
            if f == out_dir or f in seen or f in (Path("."), Path("/")):
                break
            seen.add(f)
            if f.is_dir():
                refuse_inside(f, inputs, what, folder=folder)
                if model is not None:
                    refuse_model_files(f, model, what)
