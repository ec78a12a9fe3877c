"""The web app against a careless or hostile user (attack round 11): names that are Markdown or
HTML stay text on the page (the Train tab's plan and Done lines, the model line, the Anomaly
summary, error toasts), and a page served from another port of this machine is another site."""

from __future__ import annotations

import http.client
import shutil
import time

import pytest

from test_web7 import serve_demo
from test_web_safety import raw
from test_webcli6 import SIZE, digits, run  # noqa: F401 - the tiny run inside the data root, as fixtures

DEADLINE = 120.0  # seconds a test waits for the served app to get somewhere before it fails
# A folder name that breaks out of a one-backtick code span into a link and an image
HOSTILE = "x`[ln](http:\\\\evil.example)<img src=x id=pwn>`y"


@pytest.fixture()
def served(run, digits, tmp_path):  # noqa: F811
    app, url = serve_demo(run, digits, tmp_path / "work")
    yield url
    app.close()


def _raw(url: str, headers: list[tuple[str, str]]) -> http.client.HTTPResponse:
    """GET the API description with exactly these headers."""
    return raw(url, "GET", "/gradio_api/info", dict(headers))


def test_a_page_on_another_port_of_this_machine_is_another_site(served):
    """Any local program's page (a dev server, `python -m http.server` over a downloaded .html) could
    drive the app and read its answers: Origin http://127.0.0.1:OTHER got 200 and a CORS grant."""
    port = int(served.rstrip("/").rsplit(":", 1)[1])
    for host in ("127.0.0.1", "localhost"):
        own = [("Host", f"{host}:{port}")]
        r = _raw(served, [*own, ("Origin", f"http://{host}:{port}")])
        assert r.status == 200 and r.getheader("access-control-allow-origin") == f"http://{host}:{port}"
        for origin in (f"http://{host}:{port + 1}", f"http://{host}", f"https://{host}:{port}"):
            r = _raw(served, [*own, ("Origin", origin)])
            assert r.status == 403, origin
            assert r.getheader("access-control-allow-origin") is None
    # a Host with a user part names the host after the "@": no browser sends one, and it is no name of ours
    assert _raw(served, [("Host", f"evil.example@127.0.0.1:{port}")]).status == 400


@pytest.mark.slow
def test_names_that_are_markdown_or_html_stay_text_on_the_page(served, digits, tmp_path):  # noqa: F811
    """A folder or upload name was pasted into the page's Markdown inside one pair of backticks: a
    backtick in it closed the code span, and what followed rendered as a link and an image; an
    error message went into the toast as HTML."""
    from browser_support import chromium

    folder = digits / HOSTILE
    shutil.copytree(digits / "train", folder, dirs_exist_ok=True)
    upload = tmp_path / f"{HOSTILE}.png"
    shutil.copy(next((digits / "train").rglob("*.png")), upload)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(served)
        page.get_by_role("tab", name="Train").click()
        # every state of the status line (the plan line shows only until the first epoch ends)
        page.evaluate("""() => { window.seen = [];
            new MutationObserver(() => window.seen.push(document.querySelector('#train-status').innerHTML))
                .observe(document.querySelector('#train-status'), {subtree: true, childList: true, characterData: true}); }""")
        page.locator("#train-folder textarea").fill(HOSTILE)
        for box, value in (("#train-size", SIZE), ("#train-epochs", 1)):
            page.locator(f"{box} input[type=number]").fill(str(value))
            page.locator(f"{box} input[type=number]").press("Enter")
        page.locator("#train-btn").click()
        page.locator("#train-status").get_by_text("Done").wait_for(timeout=DEADLINE * 1000)
        seen = page.evaluate("window.seen")
        assert any("images (" in s for s in seen), "the plan line was never shown"
        for html in seen + [page.locator("#model-info").inner_html()]:
            assert "<a " not in html and "<img" not in html, html
        for box in ("#train-status", "#model-info"):
            assert f"{HOSTILE}-" in page.locator(box).inner_text()  # the run's name, as it is

        page.get_by_role("tab", name="Anomaly").click()
        page.locator("#anomaly-files input[type=file]").set_input_files(str(upload))
        page.locator("#score-btn").click()
        page.locator("#anomaly-summary").get_by_text("anomalous").first.wait_for(timeout=DEADLINE * 1000)
        # Gradio's upload keeps only a file name's safe characters; the summary fences it all the same
        assert page.locator("#anomaly-summary").locator("a, img").count() == 0

        page.get_by_role("tab", name="Train").click()
        page.locator("#train-folder textarea").fill("<img src=x id=pwn>")  # no such folder: an error toast
        page.locator("#train-btn").click()
        toast = page.get_by_test_id("toast-text").filter(has_text="no such folder")
        toast.wait_for(timeout=DEADLINE * 1000)
        assert "<img src=x id=pwn>" in toast.inner_text()
        assert page.locator("#pwn").count() == 0


def test_training_on_the_folder_that_holds_the_runs_folder_says_so_in_the_pages_words(served, digits):  # noqa: F811
    """`.` (the data root, which holds the default runs folder) was refused with the library's
    "--out runs-DATE is inside the input folder root; write it somewhere else": an option the page has not."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    c = Client(served, verbose=False)
    before = sorted((digits / "runs").iterdir())
    for folder in (".", "runs", str(digits)):
        with pytest.raises(AppError, match="(holds|is) the app's runs folder") as e:
            c.predict(folder, SIZE, 4, 1, api_name="/train")
        assert "--out" not in str(e.value) and str(digits) not in str(e.value)
    assert sorted((digits / "runs").iterdir()) == before  # nothing begun


@pytest.mark.slow
def test_the_app_runs_a_bounded_number_of_trainings_at_once(run, digits, tmp_path, monkeypatch):  # noqa: F811
    """Every session could train at once (a REST call is a session of its own): 8 trainings at 128 px
    held 4 GB. One more than the app's limit is refused with a message, and the slot comes back
    when a training ends."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from vaekit_demo import context

    monkeypatch.setattr(context, "MAX_TRAININGS", 1, raising=False)
    app, url = serve_demo(run, digits, tmp_path / "work")
    try:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        job = a.submit("train", SIZE, 4, 200, api_name="/train")
        end = time.monotonic() + DEADLINE
        while not any("epoch 1/200" in str(o[0]) for o in job.outputs() if isinstance(o, (list, tuple))):
            assert time.monotonic() < end, "gave up waiting for the first epoch"
            time.sleep(0.05)
        with pytest.raises(AppError, match=r"the app is running 1 training\(s\) already"):
            b.predict("train", SIZE, 4, 1, api_name="/train")
        a.predict(api_name="/stop")
        assert "Stopped" in job.result(timeout=DEADLINE)[0]
        end = time.monotonic() + DEADLINE
        while True:  # the slot is free once a's worker has ended (just after its Stopped message)
            try:
                assert "**Done**" in b.predict("train", SIZE, 4, 1, api_name="/train")[0]
                break
            except AppError as e:
                assert "the most it runs at once" in str(e) and time.monotonic() < end, e
                time.sleep(0.2)
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["n" * 250, "é" * 120])  # 250 and 240 bytes: the file system allows 255
def test_a_folder_with_a_long_name_trains_into_a_run_named_after_its_start(served, digits, name):  # noqa: F811
    """The run folder FOLDER-DATE passed 255 bytes: "File name too long", shown as a bug in vaekit."""
    from gradio_client import Client

    shutil.copytree(digits / "train", digits / name, dirs_exist_ok=True)
    said = Client(served, verbose=False).predict(name, SIZE, 4, 1, api_name="/train")[0]
    assert said.startswith("**Done**")
    made = [p.name for p in (digits / "runs").iterdir() if p.name.startswith(name[:100])]
    assert len(made) == 1 and len(made[0].encode()) <= 255
