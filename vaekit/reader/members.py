"""The defect reader's members trained side by side: one torch thread each, in threads of this
process (torch lets go of the GIL in its kernels), as many at a time as torch had threads.

A member is a small U-Net on 64 px crops; on a CPU its convolutions gain little from a second
intra-op thread, so the cores take members, not halves of convolutions
(`benchmarks/reader_members.py`, docs/benchmarks.md). A member's numbers do not depend on how
many run beside it, nor on the thread count: each is a one-thread run.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch


_ONE = threading.Lock()
_HOLDERS = [0, 0]  # callers inside one_thread, and torch's thread count before the first of them


@contextmanager
def one_thread() -> Iterator[int]:
    """torch at one thread inside; yields the count it had before. The count is the process's: two
    trainings at once (the web app's tabs) each inside would set back each other's 1, so the first
    caller in keeps the count and the last one out sets it back. Other work of the process in that
    time (another tab's scores) runs on one thread too: slower for a minute, the same numbers.
    OpenMP also keeps a count per thread: a caller that leaves while another is still inside stays
    at one thread itself (in the web app, the rest of that training: its thread ends with it)."""
    with _ONE:
        if _HOLDERS[0] == 0:
            _HOLDERS[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _HOLDERS[0] += 1
        threads = _HOLDERS[1]
    try:
        yield threads
    finally:
        with _ONE:
            _HOLDERS[0] -= 1
            if _HOLDERS[0] == 0:
                torch.set_num_threads(_HOLDERS[1])


def train_members(jobs: Sequence[Callable], should_stop: Callable[[], bool] | None, threads: int) -> list:
    """[job(stop) for each job], `stop` the callable a job asks every step. threads > 1: up to
    that many jobs at once (the caller has torch at one thread: one_thread); a job that fails,
    or a KeyboardInterrupt while they run, stops the others at their next step and is raised
    once all have ended. Otherwise one after the other, as they come."""
    if threads <= 1 or len(jobs) <= 1:
        return [job(should_stop) for job in jobs]
    halt = threading.Event()

    def stop() -> bool:
        if not halt.is_set() and should_stop is not None and should_stop():
            halt.set()
        return halt.is_set()

    with ThreadPoolExecutor(max_workers=min(len(jobs), threads), thread_name_prefix="vaekit-reader") as pool:
        futures = [pool.submit(job, stop) for job in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)  # a failed member is seen at once, not after those before it
            for f in futures:
                if f.done() and f.exception() is not None:
                    f.result()
            return [f.result() for f in futures]
        except BaseException:
            halt.set()  # the rest stop at their next step; the pool's exit waits for them
            raise
