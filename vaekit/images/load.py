"""Loading many files: decode them in order, in worker processes with bounded read-ahead.

One unreadable file is skipped and recorded, never fatal; memory stays flat however many
files there are when iterating (`iter_load`); `load_images` gathers them into one array.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from vaekit.errors import BadInput, check_callbacks
from vaekit.images.read import ImageReadError, check_channels, check_size, load_image

@dataclass
class LoadReport:
    images: np.ndarray  # (N, C, H, W) uint8, the loaded files in order
    paths: list[Path]  # the files behind `images`, same order
    skipped: list[tuple[Path, str]]  # (file, reason) for each file that could not be decoded


_Loaded = tuple[Path, "np.ndarray | None", "str | None"]  # (path, pixels, reason): one is None


def _load_chunk(paths: list[Path], size: int, channels: int, crop: bool = True) -> list[_Loaded]:
    out: list[_Loaded] = []
    for p in paths:
        try:
            out.append((p, load_image(p, size, channels, crop), None))
        except ImageReadError as e:
            out.append((p, None, e.reason))
        except MemoryError:  # one file must never abort a whole run
            out.append((p, None, "not enough memory to decode it"))
    return out


def _watch_parent(parent: int) -> None:
    """In each decoding process: exit as soon as the process that started it is gone. A pool's
    processes otherwise outlive a parent killed by SIGKILL, waiting for work forever, and hold
    what they inherited from it: the lock of its journal or run folder, which would refuse
    the --resume that is to go on from it."""
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the parent handles them and
    # shuts the pool down (a worker that died of one would break the pool: a traceback, exit 3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first = os.getppid()  # the job itself when forked; a forkserver under that start method

    def gone() -> bool:
        if os.getppid() != first:  # re-parented: whoever started this process has exited
            return True
        try:
            os.kill(parent, 0)  # the job, whatever the start method
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's: cannot be ours
            return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="vaekit-parent-watch", daemon=True).start()


MAX_WORKERS = 256  # decoding processes: the CLI's bound too (`--workers`); each is a forked copy of this one
# decoded pixels a streaming job holds in one batch (vaekit.stream: a slice over it comes in parts) and
# in one worker's chunk of files here; a single file may hold more (up to read.MAX_WHOLE_PIXELS read whole)
BATCH_PIXELS = 64 * 256 * 256


def iter_load(
    paths: Sequence[Path], size: int, channels: int, workers: int = 0, crop: bool = True
) -> Iterator[_Loaded]:
    """Yield (path, uint8 (C, size, size) or None, reason or None) per file, in input order
    (crop=False: each whole image, its shorter side `size`).

    With workers > 1, chunks decode in that many processes, 2 x workers chunks in flight, each of
    at most BATCH_PIXELS (or one file: every whole image is a chunk of its own, its size unknown
    until decoded), so memory stays flat however many files there are and however large.
    """
    check_size(size)  # checked here, not in the generator, so a bad value fails at the call
    check_channels(channels)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= MAX_WORKERS:
        raise BadInput(f"invalid workers {workers!r}: expected an integer from 0 to {MAX_WORKERS}")
    return _iter_load(paths if isinstance(paths, Sequence) else list(paths), size, channels, workers, crop)


def _iter_load(paths: Sequence[Path], size: int, channels: int, workers: int, crop: bool) -> Iterator[_Loaded]:
    # `paths` is read one slice at a time (it may be a lazy view of a million-file list)
    if workers <= 1 or len(paths) <= 1:  # a pool costs more than it saves here
        for i in range(len(paths)):
            yield from _load_chunk([Path(paths[i])], size, channels, crop)
        return
    step = max(1, min(64, len(paths) // (workers * 4), BATCH_PIXELS // size**2 if crop else 1))
    chunks = ([Path(p) for p in paths[i : i + step]] for i in range(0, len(paths), step))
    # no more processes than chunks: a pool that forks starts every one of them at once
    with ProcessPoolExecutor(min(workers, -(-len(paths) // step)), initializer=_watch_parent,
                             initargs=(os.getpid(),)) as pool:
        first = islice(chunks, 2 * workers)  # bounded, so results cannot pile up in memory
        pending = deque(pool.submit(_load_chunk, c, size, channels, crop) for c in first)
        while pending:
            done = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(_load_chunk, nxt, size, channels, crop))
            yield from done


def load_images(
    paths: Sequence[Path],
    size: int,
    channels: int,
    progress: Callable[..., None] | None = None,
    workers: int = 0,
) -> LoadReport:
    """Load every file with `load_image`, skipping (and recording) the unreadable ones."""
    check_callbacks(progress=progress)
    results = iter_load(paths, size, channels, workers)  # checks the arguments first
    total = len(paths)
    out = np.empty((total, channels, size, size), np.uint8)
    loaded: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    every = max(1, total // 100)
    for done, (p, x, reason) in enumerate(results, 1):
        if x is None:
            skipped.append((p, reason or ""))
        else:
            out[len(loaded)] = x
            loaded.append(p)
        if progress is not None and (done % every == 0 or done == total):
            progress(done, total)
    return LoadReport(out[: len(loaded)], loaded, skipped)

