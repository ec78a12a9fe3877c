"""A decode killed while it moves its files into place (SIGKILL: nothing of it runs again) is taken
back by the next decode into the same folder, from the staging folder's move journal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vaekit.fileio import staging


def _killed_while_moving(out: Path, files: dict[str, bytes], kill_before: int, replace: bool = True) -> None:
    """A forked decode that stages `files` (name -> bytes) under `out` and is SIGKILLed just
    before its move number `kill_before` (0-based): the moves before it are done."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            moves = [0]
            real = staging._move

            def move(src, dst, rep=True):
                if moves[0] == kill_before:
                    os.kill(os.getpid(), signal.SIGKILL)
                moves[0] += 1
                real(src, dst, rep)

            staging._move = move
            targets = [out / n for n in files]
            with staging.staged(out, targets, replace) as paths:
                for p, data in zip(paths, files.values()):
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _decode(out: Path, files: dict[str, bytes], replace: bool = True) -> None:
    with staging.staged(out, [out / n for n in files], replace) as paths:
        for p, data in zip(paths, files.values()):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def _tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_files_a_killed_decode_moved_are_taken_back_by_the_next(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"the user's")
    files = {"a.png": b"A", "deep/er/b.png": b"B", "c.png": b"C", "d\nname.png": b"D"}
    _killed_while_moving(out, files, kill_before=3)
    assert {"a.png", "deep/er/b.png", "c.png"} <= set(_tree(out))  # three moved, then killed
    (out / "d\nname.png").write_bytes(b"put there since")  # by someone else: not the decode's
    _decode(out, {"z.png": b"Z"})
    assert _tree(out) == {"notes.txt": b"the user's", "d\nname.png": b"put there since", "z.png": b"Z"}
    assert not (out / "deep").exists()  # the folders it made, empty again, went too


def test_files_a_killed_decode_replaced_come_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for n in ("a.png", "b.png", "c.png"):
        (out / n).write_bytes(b"old " + n.encode())
    _killed_while_moving(out, {"a.png": b"new a", "b.png": b"new b", "c.png": b"new c"}, kill_before=2)
    assert (out / "a.png").read_bytes() == b"new a" and (out / "c.png").read_bytes() == b"old c.png"
    (out / "b.png").unlink()
    (out / "b.png").write_bytes(b"the user's own")  # replaced since, by someone else: it stays
    _decode(out, {"z.png": b"Z"})
    assert _tree(out) == {"a.png": b"old a.png", "b.png": b"the user's own", "c.png": b"old c.png", "z.png": b"Z"}


@pytest.mark.parametrize("kill_before", [0, 1])
def test_a_journal_line_cut_short_or_a_kill_before_any_move_takes_back_nothing_else(tmp_path, kill_before):
    out = tmp_path / "out"
    out.mkdir()
    _killed_while_moving(out, {"a.png": b"A", "b.png": b"B"}, kill_before=kill_before)
    (stale,) = [p for p in out.iterdir() if p.name.startswith(staging.STAGE)]
    with open(stale / staging.JOURNAL, "a") as f:
        f.write('{"to": "62')  # the last line, as a kill in its middle would leave it
    (out / "keep.png").write_bytes(b"K")
    _decode(out, {"z.png": b"Z"})
    assert _tree(out) == {"keep.png": b"K", "z.png": b"Z"}


def test_a_journal_edited_to_point_outside_the_output_folder_takes_back_nothing_there(tmp_path):
    """A killed decode's journal names paths under its output folder only: one edited to name a
    file elsewhere (its identity copied from a stat anyone may take) removes nothing."""
    import json

    out, victim = tmp_path / "out", tmp_path / "elsewhere.png"
    out.mkdir()
    victim.write_bytes(b"not the decode's")
    _killed_while_moving(out, {"a.png": b"A", "b.png": b"B"}, kill_before=1)
    (stale,) = [p for p in out.iterdir() if p.name.startswith(staging.STAGE)]
    st = os.lstat(victim)
    with open(stale / staging.JOURNAL, "a") as f:
        for rel in ("../elsewhere.png", str(victim)):
            f.write(json.dumps({"to": os.fsencode(rel).hex(), "id": staging._identity(st), "old": None}) + "\n")
    _decode(out, {"z.png": b"Z"})
    assert victim.read_bytes() == b"not the decode's" and _tree(out) == {"z.png": b"Z"}


def test_a_file_replaced_without_a_way_back_keeps_its_new_version(tmp_path, monkeypatch):
    """Where no hard link keeps the file a move replaces (FAT, SMB, protected hard links), the
    journal said 'old: null' as for a new file, and the take-back removed the new version too."""
    out = tmp_path / "out"
    out.mkdir()
    for n in ("a.png", "b.png"):
        (out / n).write_bytes(b"old " + n.encode())

    def no_links(*a, **kw):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # the forked decode has none either
    _killed_while_moving(out, {"a.png": b"new a", "b.png": b"new b"}, kill_before=1)
    monkeypatch.undo()
    _decode(out, {"z.png": b"Z"})
    assert _tree(out) == {"a.png": b"new a", "b.png": b"old b.png", "z.png": b"Z"}


def test_the_same_decode_run_again_is_not_refused_by_the_killed_ones_files(tmp_path):
    """The take-back ran inside the staging step, after the outputs were checked: the killed
    decode's own PNGs made the same command exit 2 ("already exist; pass --overwrite")."""
    from vaekit.codes.targets import check_targets

    out = tmp_path / "out"
    files = {"a.png": b"A", "b.png": b"B", "c.png": b"C"}
    _killed_while_moving(out, files, kill_before=2)
    staging.recover(out)
    check_targets(out, [out / n for n in files], False)  # nothing in the way any more
    _decode(out, files, replace=False)
    assert _tree(out) == files


def test_two_killed_decodes_give_back_the_users_file(tmp_path):
    """A replaced the user's a.png and was killed; B replaced A's and was killed. Replayed in any
    order, one folder at a time, the user's file went with A's folder half the time."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's")
    _killed_while_moving(out, {"a.png": b"from A", "x.png": b"X"}, kill_before=1)
    _killed_while_moving(out, {"a.png": b"from B", "y.png": b"Y"}, kill_before=1)
    assert (out / "a.png").read_bytes() == b"from B"
    _decode(out, {"z.png": b"Z"})
    assert _tree(out) == {"a.png": b"the user's", "z.png": b"Z"}


@pytest.mark.parametrize("bad", ['{"dirs": 5}', '{"dirs": [5]}', "[" * 200000, '{"to": 7, "id": 1}', "fifo"])
def test_a_damaged_journal_is_passed_over(tmp_path, bad):
    """A journal of another shape gave a traceback on every later decode into the folder (TypeError,
    RecursionError), and a FIFO in its place hung it."""
    out = tmp_path / "out"
    out.mkdir()
    _killed_while_moving(out, {"a.png": b"A", "b.png": b"B"}, kill_before=1)
    (stale,) = [p for p in out.iterdir() if p.name.startswith(staging.STAGE)]
    if bad == "fifo":
        (stale / staging.JOURNAL).unlink()
        os.mkfifo(stale / staging.JOURNAL)
    else:
        with open(stale / staging.JOURNAL, "a") as f:
            f.write(bad + "\n")
    _decode(out, {"z.png": b"Z"})
    assert "z.png" in _tree(out) and not stale.exists()
