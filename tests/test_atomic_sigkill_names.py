"""A SIGKILL between an atomic write's syscalls leaves no temporary name behind (data-safety.md).

A write that may not replace anything (no --overwrite: every CSV/JSON, code file, heat map and
reconstruction of a new job) linked its finished unnamed file to `.NAME.xxxx.tmp`, linked that to
NAME and unlinked it: a SIGKILL before the unlink left a hard link of the output beside it, and one
before the second link a whole copy of it beside no output, which nothing ever removed.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from vaekit.fileio import atomic

    target, at = Path(sys.argv[1]), sys.argv[2]
    real = getattr(os, at)

    def die(*a, **k):  # SIGKILL just before the call: nothing after it runs, no finally, no except
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(os, at, die)
    atomic.atomic_write_bytes(target, b"rows\\n", replace=False)
    setattr(os, at, real)
""")


@pytest.mark.parametrize("at", ["unlink", "replace"])
def test_a_sigkill_during_a_no_replace_write_leaves_only_the_output(tmp_path, at):
    out = tmp_path / "scores.csv"
    run = subprocess.run([sys.executable, "-c", _CHILD, str(out), at], env=os.environ.copy())
    assert run.returncode in (0, -signal.SIGKILL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
    assert out.read_bytes() == b"rows\n"


@pytest.mark.parametrize("n", [1, 2])
def test_a_sigkill_at_any_link_of_a_no_replace_write_leaves_the_output_or_nothing(tmp_path, n):
    # just before the n-th link(2): no output and no copy of it under another name, or the output alone
    child = _CHILD.replace("setattr(os, at, die)", f"""
calls = []
def link(*a, **k):
    calls.append(1)
    if len(calls) == {n}:
        die()
    return real(*a, **k)
os.link = link""")
    run = subprocess.run([sys.executable, "-c", child, str(tmp_path / "scores.csv"), "link"], env=os.environ.copy())
    assert run.returncode in (0, -signal.SIGKILL)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["scores.csv"])


def test_a_no_replace_write_still_refuses_a_file_in_its_way_and_keeps_its_own(tmp_path):
    from vaekit.errors import OutputExists
    from vaekit.fileio import atomic

    out = tmp_path / "scores.csv"
    out.write_bytes(b"yours\n")
    with pytest.raises(OutputExists):
        atomic.atomic_write_bytes(out, b"rows\n", replace=False)
    with pytest.raises(OutputExists):
        atomic.atomic_write_bytes(out, b"rows\n", replace=False, keep_same=True)
    assert out.read_bytes() == b"yours\n" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
    out.write_bytes(b"rows\n")
    atomic.atomic_write_bytes(out, b"rows\n", replace=False, keep_same=True)  # the job's own: kept
    (tmp_path / "link.csv").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExists):  # a dangling link is in the way too; nothing made through it
        atomic.atomic_write_bytes(tmp_path / "link.csv", b"rows\n", replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "scores.csv"]
