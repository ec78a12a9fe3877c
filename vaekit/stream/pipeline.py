"""Threads around a scoring loop: a producer that runs ahead of it, a writer that runs behind it.

Pillow's decoders, zlib, fsync and torch's kernels release the GIL, so decoding the next batch,
scoring this one and writing the last one's files overlap on separate cores. Both helpers keep
order, bound what is in flight (`depth` items), and hand an error in their thread to the caller.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

DEPTH = 2  # items in flight between a helper thread and its caller


_END = object()


def read_ahead(items: Iterator, depth: int = DEPTH, init: Callable[[], None] | None = None) -> Iterator:
    """`items`, produced by a daemon thread at most `depth` ahead of the consumer. An error in
    the producer is raised in the consumer; closing the iterator (or the consumer stopping)
    stops the producer at its next item. `init()` runs first in that thread (training's batch
    reader sets the thread's CUDA device there: vaekit.training.data)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if init is not None:
                init()
            for item in items:
                if not put((item, None)):
                    break
        except BaseException as e:  # handed to the consumer, raised there
            put((_END, e))
            return
        finally:
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()  # shuts a decoding pool down from its own thread
        put((_END, None))

    def consume() -> Iterator:
        worker = threading.Thread(target=produce, name="vaekit-read-ahead", daemon=True)
        worker.start()
        try:
            while True:
                item, error = q.get()
                if item is _END:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            stop.set()
            try:
                worker.join(timeout=5)
            except KeyboardInterrupt:  # a second Ctrl-C while the first one's clean-up runs: that one exits
                pass

    return consume()


class WriteBehind:
    """`fn(item)` for each item put, in order, in one daemon thread at most `depth` items behind
    the caller: a job's writing (heat maps, journal lines) overlaps its scoring. An error in
    `fn` is raised in the caller at its next `put` or at `close`, and stops the writing.

    As a context manager, every item put is written before the block is left, even when it is
    left by an error or a Ctrl-C. A Ctrl-C during that wait stops the writing after the item in
    hand, which is always finished: when the block is left, the thread has ended and nothing
    writes behind the caller's back (the caller may close its files)."""

    def __init__(self, fn: Callable, depth: int = DEPTH):
        self._fn, self._q = fn, queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._done = threading.Event()  # not Thread.is_alive: a join cut by Ctrl-C can leave that wrong (CPython 3.11)
        self._thread = threading.Thread(target=self._run, name="vaekit-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                try:
                    self._fn(item)
                except BaseException as e:
                    self._error = e
                    return
        finally:
            self._done.set()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item) -> None:
        while True:
            self._raise()
            if self._done.is_set():
                self._raise()  # it may have failed since the first look
                raise RuntimeError("the writing thread has stopped")
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every item is written; raise the writer's error, if any. Interrupted
        (Ctrl-C), stop after the item in hand, wait for it, and raise the interruption."""
        try:
            while not self._done.is_set():
                try:
                    self._q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._done.wait()
            self._thread.join(1)  # the thread's last step, after its work is done
        except BaseException:
            self.stop()
            raise
        self._raise()

    def stop(self) -> None:
        """Stop after the item in hand (dropping those queued) and wait for it: one item's
        writing is short, so further Ctrl-Cs wait too rather than leave a writer running."""
        self._stop.set()
        while not self._done.is_set():
            try:
                self._done.wait(0.1)
            except KeyboardInterrupt:
                continue
        try:
            self._thread.join(1)
        except KeyboardInterrupt:
            pass

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:
            self.close()
            return
        try:  # the caller failed (or was stopped): what it already handed over is still written
            self.close()
        except Exception:
            pass  # the caller's error is the one to report
