"""Whether two sets of images share a file: by identity (the same file under two names) or by
content (a copy). A threshold set from the images a model trained on, or metrics whose normal
and anomalous sets share an image, would measure nothing."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from vaekit.errors import BadInput
from vaekit.fileio.digests import file_sha256


def file_identity(path) -> tuple:
    """A file's device and inode (its resolved path where it cannot be stat'ed): two names of
    the very same file, a hard or a symbolic link, have the same identity."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def first_shared(mine: Iterable, theirs: Iterable) -> tuple[Path, Path] | None:
    """(a file of `mine`, the file of `theirs` it is) for the first file of `mine` that is one of
    `theirs` or holds the same bytes (two empty files do not); None when they share none."""
    return next(shared_files(mine, theirs), None)


def shared_files(mine: Iterable, theirs: Iterable) -> Iterator[tuple[Path, Path]]:
    """(a file of `mine`, the file of `theirs` it is), for each file of `mine` that is one of
    `theirs` or holds the same bytes (two empty files do not). Only files of a size that both
    sets hold are read, so two unrelated folders cost a stat per file."""
    ids, by_size = {}, defaultdict(list)
    for p in theirs:
        ids[file_identity(p)] = p
        try:
            size = os.stat(p).st_size
        except OSError:
            continue
        if size:  # two empty files hold no image, so neither is a copy of a training image
            by_size[size].append(p)
    # size -> {sha256: the first of theirs with those bytes}: a lookup per file of mine, not a
    # comparison with every file of its size (same-size formats, BMP or raw TIFF, made that
    # quadratic: 22 s for 10k files against 10k, 40 min at 100k)
    digests: dict[int, dict[bytes, object]] = {}
    for p in mine:
        same = ids.get(file_identity(p))
        if same is not None:
            yield Path(p), Path(same)
            continue
        try:
            size = os.stat(p).st_size
        except OSError:
            continue
        if size in by_size:
            if size not in digests:  # each of theirs is read once, and only for a size of mine
                digests[size] = {d: q for q in reversed(by_size[size]) if (d := file_sha256(q)) is not None}
            same = digests[size].get(file_sha256(p))
            if same is not None:
                yield Path(p), Path(same)


def refuse_copies(anomalous: Iterable, normal: Iterable) -> None:
    """BadInput when images of `anomalous` hold the same bytes as images of `normal` (copies under
    other names): one image cannot be both, and its two labels would skew every metric. Only files
    of a size both sets hold are read (shared_files), so distinct sets cost a stat each."""
    pairs = list(shared_files(anomalous, normal))
    if pairs:
        a, n = pairs[0], len(pairs)
        raise BadInput(f"{n} anomalous image{'s hold' if n > 1 else ' holds'} the same bytes as a normal image "
                       f"(e.g. {a[0]} and {a[1]}); an image cannot be both: remove the copies from one set")
