"""The streaming core: shards, fixed batches, and the resumable row journal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vaekit import stream
from vaekit.stream import pipeline
from vaekit.errors import BadInput, DamagedFile


def _folder(tmp_path, n=7, bad=(2, 5)):
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:02d}.png"
        if i in bad:
            p.write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((10, 12), i * 30, np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("n,batch,count", [(0, 4, 2), (7, 3, 2), (10, 4, 3), (9, 1, 4), (5, 8, 3)])
def test_shards_are_whole_batches_that_cover_every_file_once(n, batch, count):
    parts = [stream.shard(range(n), i, count, batch) for i in range(count)]
    assert sorted(p for part in parts for p in part) == list(range(n))
    for i, part in enumerate(parts):
        assert {p // batch for p in part} == {b for b in range(-(-n // batch)) if b % count == i}


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "0/0", "1/2/3"])
def test_bad_shard_is_refused(text):
    with pytest.raises(BadInput, match="shard"):
        stream.parse_shard(text)


def test_batches_are_fixed_slices_with_their_skipped_files(tmp_path):
    paths = _folder(tmp_path)
    batches = list(stream.iter_batches(paths, 16, 1, batch_size=3))
    assert [b.index for b in batches] == [0, 1, 2]
    assert [b.positions for b in batches] == [[0, 1], [3, 4], [6]]
    assert [[p.name for p, _ in b.skipped] for b in batches] == [["02.png"], ["05.png"], []]
    assert batches[1].images.shape == (2, 1, 16, 16) and batches[1].images.dtype == np.uint8
    assert int(batches[1].images[1].mean()) == 4 * 30
    # skipping batches never reads them, and the others keep their slices
    again = list(stream.iter_batches(paths, 16, 1, batch_size=3, skip_batches={0, 2}))
    assert [b.index for b in again] == [1] and again[0].positions == [3, 4]
    np.testing.assert_array_equal(again[0].images, batches[1].images)


def test_journal_resumes_after_a_line_cut_short(tmp_path):
    out = tmp_path / "scores.csv"
    j = stream.Journal(out, {"model": "m"}, resume=False)
    j.append(0, [{"path": "a", "score": 1.5}], [("x.png", "corrupt")])
    j.append(1, [{"path": "b", "score": float("nan")}])
    with open(j.path, "ab") as f:  # a crash in the middle of the third batch's line
        f.write(b'{"batch": 2, "rows": [{"pa')
    j.close()  # the process died: its lock went with it
    with pytest.raises(BadInput, match="--resume"):
        stream.Journal(out, {"model": "m"}, resume=False)
    with pytest.raises(BadInput, match="other settings.*model"):
        stream.Journal(out, {"model": "other"}, resume=True)
    j2 = stream.Journal(out, {"model": "m"}, resume=True)
    assert j2.done == {0, 1}
    j2.append(2, [{"path": "c", "score": 3.0}])
    assert [r["path"] for r in j2.rows()] == ["a", "b", "c"]
    assert list(j2.rows())[1]["score"] is None  # JSON has no NaN: it is written as null
    assert j2.skipped() == [("x.png", "corrupt")]
    j2.finish(lambda f: f.write(json.dumps([r["path"] for r in j2.rows()]).encode()))
    assert json.loads(out.read_text()) == ["a", "b", "c"] and not j2.path.exists()


def test_journal_that_is_not_one_is_a_damaged_file(tmp_path):
    out = tmp_path / "scores.csv"
    (tmp_path / "scores.csv.partial").write_text("hello\n")
    with pytest.raises(DamagedFile, match="not a vaekit journal"):
        stream.Journal(out, {}, resume=True)


def test_inputs_are_named_relative_to_the_folder_they_were_found_in(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for p in ("a/sub/x.png", "a/y.png", "b/z.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / p)
    one = stream.find_inputs(tmp_path / "a")
    assert one.names == ["sub/x.png", "y.png"] and [p.name for p in one.paths] == ["x.png", "y.png"]
    two = stream.find_inputs([tmp_path / "a", tmp_path / "b" / "z.png"])
    assert two.names == ["a/sub/x.png", "a/y.png", "z.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no image files found"):
        stream.find_inputs(tmp_path / "empty")
    with pytest.raises(BadInput, match="no inputs"):
        stream.find_inputs([])


def test_a_journal_in_use_by_another_writer_is_refused_not_shared(tmp_path):
    """Two jobs writing one output (even with --resume) would interleave rows: the second gets
    InUse while the first holds OUT.partial; once the first is done, the output can be resumed."""
    from vaekit.errors import InUse

    out = tmp_path / "scores.csv"
    first = stream.Journal(out, {"model": "m"}, resume=False)
    first.append(0, [{"path": "a"}])
    for resume in (True, False):
        with pytest.raises(InUse, match="another vaekit process"):
            stream.Journal(out, {"model": "m"}, resume=resume)
    assert [r["path"] for r in first.rows()] == ["a"]  # untouched by the refused ones
    first.close()  # the process ended (a crash releases it the same way)
    again = stream.Journal(out, {"model": "m"}, resume=True)
    assert again.done == {0}
    again.close()


def test_read_ahead_keeps_order_and_decodes_in_the_background(tmp_path):
    import threading

    paths = _folder(tmp_path, n=9, bad=(4,))
    inline = list(stream.iter_batches(paths, 16, 1, batch_size=2, ahead=0))
    ahead = list(stream.iter_batches(paths, 16, 1, batch_size=2, ahead=2))
    assert [b.index for b in ahead] == [b.index for b in inline] == [0, 1, 2, 3, 4]
    for a, b in zip(ahead, inline):
        assert a.paths == b.paths and a.skipped == b.skipped and np.array_equal(a.images, b.images)
    seen = []

    def items():
        for i in range(3):
            seen.append(threading.current_thread().name)
            yield i

    assert list(pipeline.read_ahead(items(), 1)) == [0, 1, 2]
    assert set(seen) == {"vaekit-read-ahead"}


def test_read_ahead_raises_the_producers_error_in_the_consumer():
    def items():
        yield 1
        raise OSError("disk gone")

    it = pipeline.read_ahead(items(), 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_closing_a_read_ahead_stops_its_producer():
    import threading

    produced, closed = [], threading.Event()

    def items():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    it = pipeline.read_ahead(items(), 2)
    assert next(it) == 0
    it.close()
    assert closed.wait(5)  # the producer's generator was closed, by its own thread
    assert len(produced) < 10  # it stopped a few items ahead, not at the end
    assert not any(t.name == "vaekit-read-ahead" for t in threading.enumerate())


def test_write_behind_writes_in_order_in_another_thread():
    import threading

    seen = []
    with pipeline.WriteBehind(lambda item: seen.append((item, threading.current_thread().name)), depth=1) as w:
        for i in range(20):
            w.put(i)
    assert seen == [(i, "vaekit-write-behind") for i in range(20)]


def test_write_behind_raises_the_writers_error_in_the_caller():
    def fn(item):
        if item == 3:
            raise OSError("disk full")

    w = pipeline.WriteBehind(fn, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            w.put(i)
        w.close()
    assert i < 10  # raised at a put soon after, not only at close


def _on_waits(w: pipeline.WriteBehind, closing, stopping=None) -> None:
    """Run `closing()` when close() starts to wait for the writer, and `stopping()` when stop()
    does (after a Ctrl-C): the tests order their steps by these, never by timers or by when a
    signal happens to land, so that a loaded machine cannot reorder them."""
    import threading

    class Watched(threading.Event):
        def wait(self, timeout=None):
            hook = closing if timeout is None else stopping
            if hook is not None:
                hook()
            return super().wait(timeout)

    w._done = Watched()  # the writer sets it only when it ends, and it has not: it waits for items


def test_write_behind_still_writes_what_it_was_given_when_the_caller_fails():
    import threading

    release, seen = threading.Event(), []

    def fn(item):
        assert release.wait(10)
        seen.append(item)

    w = pipeline.WriteBehind(fn, depth=2)
    _on_waits(w, closing=release.set)  # the writer holds item 0 until the block is being left
    with pytest.raises(KeyboardInterrupt):
        with w:
            w.put(0)
            w.put(1)
            raise KeyboardInterrupt
    assert release.is_set() and seen == [0, 1]  # both were written before the error left the block


def test_a_ctrl_c_while_waiting_for_the_writer_leaves_no_writer_running():
    import threading

    in_hand, release, seen = threading.Event(), threading.Event(), []

    def fn(item):
        in_hand.set()
        assert release.wait(10)
        seen.append(item)

    def ctrl_c() -> None:  # what Python raises in close's wait when the user presses Ctrl-C
        assert in_hand.wait(10)  # the writer holds item 0; items 1 and 2 are queued
        raise KeyboardInterrupt

    w = pipeline.WriteBehind(fn, depth=3)
    _on_waits(w, closing=ctrl_c, stopping=release.set)  # the writer finishes its item once told to stop
    with pytest.raises(KeyboardInterrupt):
        with w:
            for i in range(3):
                w.put(i)
    assert release.is_set()  # stop() waited for the writer
    assert not any(t.name == "vaekit-write-behind" for t in threading.enumerate())
    assert seen == [0]  # the item in hand was finished; the queued ones were dropped, not written later


def test_a_closed_journal_takes_no_more_rows_and_releases_its_lock(tmp_path):
    out = tmp_path / "scores.csv"
    j = stream.Journal(out, {"model": "m"}, resume=False)
    j.append(0, [{"path": "a"}])
    j.close()
    with pytest.raises(RuntimeError, match="closed"):
        j.append(1, [{"path": "b"}])
    again = stream.Journal(out, {"model": "m"}, resume=True)  # not "in use"
    assert again.done == {0} and again.resumed
    again.close()


def test_reading_images_leaves_the_warning_filters_as_they_were(tmp_path):
    import warnings

    paths = _folder(tmp_path, n=9, bad=(3,))
    before = list(warnings.filters)
    for _ in stream.iter_batches(paths, 16, 1, batch_size=2):
        assert warnings.filters == before  # while the read-ahead thread decodes, too
    assert warnings.filters == before
