"""Screenshots of every tab for the README, taken in headless Chromium (Debian's /usr/bin/chromium).

    python -m vaekit_demo.screenshots RUN DATA OUT

RUN is a trained run, DATA a sample-data folder (`vaekit sample-data shapes DATA`: train/,
test/normal/, test/anomalous/), OUT the folder for train.png, compress.png, anomaly.png,
generate.png and latent.png. The Train tab goes last: training makes its run the page's model.
The README's set, every setting vaekit's own: `vaekit sample-data shapes data/shapes`, `vaekit
train data/shapes/train --out runs/shapes`, then
`python -m vaekit_demo.screenshots runs/shapes data/shapes docs/screenshots --runs-dir runs`.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT = 120_000  # ms: a busy CPU can be slow


def take(run: Path, data: Path, out: Path, runs_dir: Path | None = None, width: int = 1280) -> list[Path]:
    """One screenshot per tab (SHOTS, in order) of the app on `run`, written to `out`."""
    from playwright.sync_api import sync_playwright

    from vaekit_demo.app import build_app, launch

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vaekit-shots-"))
    app = build_app(run, runs_dir=runs_dir or tmp / "runs", data_root=Path(os.path.commonpath([data, run])))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": width, "height": 900})
            page = _Page(ctx.new_page(), out, data)
            page.page.goto(url)
            for shot in SHOTS:
                shot(page)
            ctx.close()
    finally:
        app.close()
    return page.shots


class _Page:
    """The app's page in the browser, with the steps every screenshot uses."""

    def __init__(self, page, out: Path, data: Path):
        self.page, self.out, self.data, self.shots = page, out, data, []
        self.normal = sorted((data / "test" / "normal").glob("*.png"))
        self.anomalous = sorted((data / "test" / "anomalous").glob("*.png"))

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def upload(self, elem: str, files) -> None:
        from playwright.sync_api import expect

        self.page.locator(f"{elem} input[type=file]").set_input_files([str(f) for f in files])
        expect(self.page.locator(f"{elem} .stem")).to_have_count(len(files), timeout=WAIT)  # uploaded

    def wait(self, selector: str, text: str | None = None, timeout: int = WAIT) -> None:
        where = self.page.locator(selector)
        (where.get_by_text(text) if text else where).first.wait_for(timeout=timeout)

    def shot(self, name: str) -> None:
        self.page.wait_for_timeout(800)  # let plots finish drawing
        self.page.evaluate("window.scrollTo(0, 0)")
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)


def _compress(pg: _Page) -> None:
    pg.tab("Compress")
    pg.upload("#compress-files", pg.normal[:4] + pg.anomalous[4:6])
    pg.page.locator("#compress-btn").click()
    pg.wait("#compress-summary", "bytes")
    pg.wait("#compress-gallery img")
    pg.page.locator("#vkc-btn").click()  # the entropy-coded .vkc beside WebP at the same size
    pg.wait("#vkc-gallery img")
    pg.shot("compress")


def _anomaly(pg: _Page) -> None:
    pg.tab("Anomaly")
    pg.upload("#anomaly-files", pg.normal[:4] + pg.anomalous[4:8])
    pg.page.locator("#score-btn").click()
    pg.wait("#anomaly-summary", "anomalous")
    pg.wait("#heatmaps img")
    pg.shot("anomaly")


def _generate(pg: _Page) -> None:
    pg.tab("Generate")
    pg.page.locator("#sample-btn").click()
    pg.upload("#interp-a", pg.normal[:1])  # file boxes (demo/tabs.py): they show the file's name, no image
    pg.upload("#interp-b", pg.anomalous[:1])
    pg.page.locator("#interp-btn").click()
    pg.wait("#samples img")
    pg.wait("#strip img")
    pg.shot("generate")


def _latent(pg: _Page) -> None:
    page = pg.page
    pg.tab("Latent space")
    page.locator("#latent-folder textarea, #latent-folder input").first.fill(str(pg.data / "train"))
    page.locator("#latent-btn").click()
    plot = page.locator("#latent-plot svg.marks")
    pg.wait("#latent-plot g.mark-symbol path")  # the points are drawn
    page.wait_for_timeout(1500)
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    if box:  # drag across the middle of the plot: the images there appear below it
        y = box["y"] + box["height"] * 0.5
        page.mouse.move(box["x"] + box["width"] * 0.55, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.65, y + 20, steps=10)
        page.mouse.up()
        pg.wait("#latent-picked img")
    pg.shot("latent")


def _train(pg: _Page) -> None:
    page = pg.page
    pg.tab("Train")
    page.locator("#train-folder textarea, #train-folder input").first.fill(str(pg.data / "train"))
    # every slider left at 0 (auto): the page trains what `vaekit train FOLDER` would (a minute or two)
    page.locator("#train-btn").click()
    pg.wait("#train-status", "Done", timeout=10 * WAIT)
    pg.shot("train")


# the Train tab goes last: training makes its run the page's model
SHOTS = (_compress, _anomaly, _generate, _latent, _train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs-dir", type=Path, help="where the Train tab's run goes (default: a temporary folder)")
    args = ap.parse_args()
    for path in take(args.run, args.data, args.out, args.runs_dir):
        print(path)


if __name__ == "__main__":
    main()
