"""The web app, sixtieth round: unreadable uploads in the lasting results, and one decode at a time
across tabs. A real Gradio server on 127.0.0.1, driven by gradio_client."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from test_web_safety import run, served, tree  # noqa: F401  (the fixtures: a tiny model served)

pytestmark = pytest.mark.slow  # a served app: left out by `dev.py test --fast`


def test_unreadable_uploads_are_counted_named_and_tabled_not_only_toasted(served, run, tree, tmp_path):  # noqa: F811
    """Three uploads of which two are no image: the summary said "0 of 1 anomalous" and the table
    and CSV held the one image; the two were named only in a toast, which goes away and which a
    script never receives."""
    import vaekit
    from gradio_client import Client, handle_file

    good = tmp_path / "good.png"
    Image.open(tree / "data" / "images" / "img_0.png").save(good)
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    c = Client(served, verbose=False)
    ups = [handle_file(str(p)) for p in (good, tmp_path / "notes.png", tmp_path / "empty.png")]
    summary, _, _, table, _ = c.predict(ups, vaekit.load(run).info.threshold, api_name="/anomaly")
    assert "**2 uploads unreadable**, not scored" in summary, summary
    assert "`notes.png` (`not an image`)" in summary and "`empty.png` (`empty file`)" in summary, summary
    rows = {r[0]: r[3] for r in (table["data"] if isinstance(table, dict) else table)}
    assert rows["good.png"] in ("normal", "anomalous")
    assert rows["notes.png"] == "unreadable: not an image" and rows["empty.png"] == "unreadable: empty file"
    _, summary, *_ = c.predict(ups[:1], "q8", api_name="/compress")
    assert "unreadable" not in summary
    _, summary, *_ = c.predict(ups, "q8", api_name="/compress")
    assert "**2 uploads unreadable**, not compressed" in summary, summary


def test_the_tabs_that_decode_uploads_take_turns_across_sessions(served, run, tree, tmp_path, monkeypatch):  # noqa: F811
    """Each decoding event had its own limit of one at a time, so requests to different tabs decoded
    at once (ten sessions, five tabs, 9000 px uploads: 3.3 GB). Two sessions' requests to two tabs
    now run one after the other: the first waits up to 3 s for the second to begin beside it, and
    no moment sees both."""
    import vaekit
    from gradio_client import Client, handle_file

    from vaekit_demo import handlers

    up = tmp_path / "one.png"
    Image.open(tree / "data" / "images" / "img_1.png").save(up)
    lock, inside, most, arrived, second = threading.Lock(), [0], [0], [0], threading.Event()

    def holding(real):
        def call(*a, **k):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                arrived[0] += 1
                first = arrived[0] == 1
            if first:
                second.wait(3)  # for the other request, were it let in beside this one
            else:
                second.set()
            try:
                return real(*a, **k)
            finally:
                with lock:
                    inside[0] -= 1
        return call

    monkeypatch.setattr(handlers, "anomaly", holding(handlers.anomaly))  # the server runs in this process
    monkeypatch.setattr(handlers, "compress", holding(handlers.compress))
    threshold, said = vaekit.load(run).info.threshold, []
    calls = [("/anomaly", [[handle_file(str(up))], threshold]), ("/compress", [[handle_file(str(up))], "q8"])]
    threads = [threading.Thread(target=lambda n=n, a=a: said.append(Client(served, verbose=False).predict(*a, api_name=n)))
               for n, a in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(said) == 2 and most[0] == 1
