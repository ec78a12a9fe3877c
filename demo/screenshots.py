"""Screenshots of every tab for the README, taken in headless Chromium (Debian's /usr/bin/chromium).

    python -m vaekit_demo.screenshots RUN DATA OUT

RUN is a trained run, DATA a sample-data folder (`vaekit sample-data shapes DATA`: train/,
test/normal/, test/anomalous/), OUT the folder for train.png, compress.png, anomaly.png,
generate.png and latent.png. The Train tab goes last: training makes its run the app's model.
The README's set: `vaekit sample-data shapes data/shapes`, `vaekit train data/shapes/train --out
runs/shapes --image-size 64 --latent-dim 16 --epochs 30`, then
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
    from playwright.sync_api import expect, sync_playwright

    from vaekit_demo.app import build_app, launch

    out.mkdir(parents=True, exist_ok=True)
    normal = sorted((data / "test" / "normal").glob("*.png"))
    anomalous = sorted((data / "test" / "anomalous").glob("*.png"))
    tmp = Path(tempfile.mkdtemp(prefix="vaekit-shots-"))
    app = build_app(run, runs_dir=runs_dir or tmp / "runs", data_root=Path(os.path.commonpath([data, run])))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    shots = []
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": width, "height": 900})
            page = ctx.new_page()
            page.goto(url)

            def tab(name: str):
                page.get_by_role("tab", name=name).click()

            def upload(elem: str, files):
                page.locator(f"{elem} input[type=file]").set_input_files([str(f) for f in files])
                expect(page.locator(f"{elem} .stem")).to_have_count(len(files), timeout=WAIT)  # uploaded

            def shot(name: str):
                page.wait_for_timeout(800)  # let plots finish drawing
                page.evaluate("window.scrollTo(0, 0)")
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            tab("Compress")
            upload("#compress-files", normal[:4] + anomalous[4:6])
            page.locator("#compress-btn").click()
            page.locator("#compress-summary").get_by_text("bytes").first.wait_for(timeout=WAIT)
            page.locator("#compress-gallery img").first.wait_for(timeout=WAIT)
            shot("compress")

            tab("Anomaly")
            upload("#anomaly-files", normal[:4] + anomalous[4:8])
            page.locator("#score-btn").click()
            page.locator("#anomaly-summary").get_by_text("anomalous").first.wait_for(timeout=WAIT)
            page.locator("#heatmaps img").first.wait_for(timeout=WAIT)
            shot("anomaly")

            tab("Generate")
            page.locator("#sample-btn").click()
            page.locator("#interp-a input[type=file]").set_input_files(str(normal[0]))
            page.locator("#interp-b input[type=file]").set_input_files(str(anomalous[0]))
            page.locator("#interp-b img").wait_for(timeout=WAIT)
            page.locator("#interp-btn").click()
            page.locator("#samples img").wait_for(timeout=WAIT)
            page.locator("#strip img").wait_for(timeout=WAIT)
            shot("generate")

            tab("Latent space")
            page.locator("#latent-folder textarea, #latent-folder input").first.fill(str(data / "train"))
            page.locator("#latent-btn").click()
            plot = page.locator("#latent-plot svg.marks")
            page.locator("#latent-plot g.mark-symbol path").first.wait_for(timeout=WAIT)  # the points are drawn
            page.wait_for_timeout(1500)
            plot.scroll_into_view_if_needed()
            box = plot.bounding_box()
            if box:  # drag across the middle of the plot: the images there appear below it
                y = box["y"] + box["height"] * 0.5
                page.mouse.move(box["x"] + box["width"] * 0.55, y)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] * 0.65, y + 20, steps=10)
                page.mouse.up()
                page.locator("#latent-picked img").first.wait_for(timeout=WAIT)
            shot("latent")

            tab("Train")
            page.locator("#train-folder textarea, #train-folder input").first.fill(str(data / "train"))
            for elem, value in (("#train-size", "32"), ("#train-epochs", "8")):
                page.locator(f"{elem} input[type=number]").fill(value)
                page.locator(f"{elem} input[type=number]").press("Enter")
            page.locator("#train-btn").click()
            page.locator("#train-status").get_by_text("Done").wait_for(timeout=10 * WAIT)
            shot("train")
            ctx.close()
    finally:
        app.close()
    return shots


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
