"""Shared test set-up: few threads (the CI box has 2 shared cores), a private pixel cache, the
CLI's command tree built once."""

from __future__ import annotations

import functools
import gc
import importlib.abc
import importlib.util
import os
import sys

import pytest
import typer.testing

os.environ.setdefault("OMP_NUM_THREADS", "1")

# typer's CliRunner rebuilds the whole click command tree from the functions' signatures on
# every invoke (~40 ms for vaekit's 16 commands, ~900 invokes: a quarter of the fast suite's
# time). The tree holds no state between invocations (a click context is made per call), so
# it is built once per app; a typer release that renames the hook fails here, loudly.
typer.testing._get_command = functools.cache(typer.testing._get_command)


class _NoGradioStubs(importlib.abc.MetaPathFinder):
    """gradio, as it is imported, regenerates a .pyi stub file beside each of its ~80 component
    classes in site-packages, parsing their sources (ComponentMeta.__new__ calls
    create_or_modify_pyi): 1.5 of the 3.2 s its import takes (vaekit_demo.app), stubs that no test
    reads. Made a no-op as gradio.component_meta is first imported, before any component class is
    made; a gradio release without the hook fails here, loudly."""

    def find_spec(self, name, path, target=None):
        if name != "gradio.component_meta":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            assert callable(module.create_or_modify_pyi), "gradio no longer has create_or_modify_pyi"
            module.create_or_modify_pyi = lambda *args, **kwargs: None

        spec.loader.exec_module = exec_module
        return spec


if "gradio" not in sys.modules:
    sys.meta_path.insert(0, _NoGradioStubs())


def _fsync_checked_not_flushed(fd: int) -> None:
    """os.fsync for tests: the descriptor is still checked (a closed one raises as before), the
    flush to disk is left out. vaekit fsyncs every file it finishes (~2,400 calls in the fast
    suite, ~3 ms each here); a test cannot observe a power cut, and tests that make fsync fail
    (tests/test_crash.py) patch over this one."""
    os.fstat(fd)


os.fsync = _fsync_checked_not_flushed


# Modules that `--dist loadscope` (dev.py test --fast) gives to one pytest-xdist worker together:
# those that import gradio (through the web app), so that only one worker pays its ~3.5 s import
# (CPU, with vaekit_demo.app) and trains the web app's tiny run (tests/built_once.py); those that
# share test_codes.py's trained runs (trained once per process). A module whose fast tests build
# the web app belongs in "web" (test_review49.py's open-box test made the other worker import gradio).
GROUPS = {
    **dict.fromkeys(("test_demo.py", "test_web7.py", "test_web7_review.py", "test_web11.py", "test_web_stop.py",
                     "test_webcli6.py", "test_hostile12.py", "test_hostile15.py", "test_review49.py"), "web"),
    **dict.fromkeys(("test_codes.py", "test_cli_codec.py", "test_cli_guards.py"), "codes"),
}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown, and never called, without it
def pytest_xdist_make_scheduler(config, log):
    """Each module's tests on one worker, as `loadscope` has it (its trained model once), with
    the modules of a group in GROUPS as one unit."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return GROUPS.get(scope.rsplit("/", 1)[-1], scope)

    return Grouped(config, log)


# The cyclic collector's youngest generation is collected every 10,000 new container objects,
# not every 700 (Python's default). A test makes torch modules, tensors, PIL images and pytest
# reports at a great rate and most of them die young; at 700 many lived just long enough to be
# promoted, and the full passes that promotion triggers (~15 a worker, each walking every object
# made since collection, ~1M in the web app's worker) took most of the collector's 2.6-3.4 s of
# CPU in that worker and 1.6-2.1 s in the other; at 10,000: 1.3 s and 0.7-0.8 s, 1-2 full passes
# (thread CPU time in gc.callbacks; four runs of the fast suite at 700, two at 10,000). Garbage
# in a reference cycle lives a little longer before it is collected; no test asserts when.
gc.set_threshold(10_000, *gc.get_threshold()[1:])


def pytest_collection_finish(session):
    """What is imported and collected by now (torch, the test modules) lives until the run ends:
    moved out of the cyclic garbage collector's sight, so that its full passes stop walking it
    (~4% of the fast suite's time was collector passes; a third of it goes). Garbage made from
    here on is collected as before."""
    gc.freeze()
    _register_hypothesis_prng()


def _register_hypothesis_prng():
    """hypothesis, as the first of its tests begins, registers the PRNG it seeds for every test:
    register_random runs gc.collect() and gc.get_referrers() over every object the collector
    tracks (~2 s of CPU in a worker that had imported gradio by then; the fuzz test's 120 examples
    take 0.6 s). Here, with everything made so far just frozen, both walk next to nothing. Once
    registered it is never registered again. The hook is hypothesis's internal one: a release
    without it costs only the time again (its tests register it themselves, as before)."""
    if "hypothesis" in sys.modules:
        try:
            from hypothesis.internal.entropy import deterministic_PRNG
        except ImportError:
            return
        with deterministic_PRNG():
            pass


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """pytest's check for exceptions raised in __del__ (its unraisableexception plugin, whose
    pytest_unconfigure runs before this trylast one) has just collected the run's garbage: what
    is left lives until the process exits. Frozen, so that the check's second pass at cleanup and
    the interpreter's own passes as it exits walk none of it. `dev.py test --fast` waits for
    each xdist worker's process to end; from the last test to the end of a run of the web app's
    modules this took 2.6-2.8 s, 0.7-1.0 s frozen (~1M objects in that worker). Garbage made
    from here on (the cleanup) is still collected and checked."""
    gc.freeze()


@pytest.fixture(autouse=True, scope="session")
def _quiet_machine(tmp_path_factory):
    # torch's intra-op threads slow ~100x when another process holds the cores: use one.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    cache = tmp_path_factory.mktemp("pixel-cache")
    old = os.environ.get("VAEKIT_CACHE_DIR")
    os.environ["VAEKIT_CACHE_DIR"] = str(cache)
    yield
    if old is None:
        os.environ.pop("VAEKIT_CACHE_DIR", None)
    else:
        os.environ["VAEKIT_CACHE_DIR"] = old
