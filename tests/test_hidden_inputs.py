"""Hidden folders and image files (names beginning with '.') are not read, as before, but are named:
`encode --lossless` of a folder reported "4 encoded, 0 skipped" while three images in it were
left out of the archive (h2's audit), and an archive of a folder is what a user may delete it after."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from export_support import random_run
from vaekit import stream
from vaekit_cli.main import app


def _folder(root):
    rng = np.random.default_rng(0)
    for rel in ["a.png", "sub/b.png", ".hidden.png", ".thumbs/c.png", "sub/.d.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(root / rel)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # no image suffix: not worth a note
    return root


def test_the_scan_names_what_it_passes_over(tmp_path):
    found = stream.find_inputs(_folder(tmp_path / "in"))
    assert found.names == ["a.png", "sub/b.png"]
    base = str(tmp_path / "in")
    assert found.hidden == [f"{base}/.hidden.png", f"{base}/.thumbs", f"{base}/sub/.d.png"]


def test_encode_and_anomaly_score_say_which_images_they_did_not_read(tmp_path):
    data = _folder(tmp_path / "in")
    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    r = CliRunner().invoke(app, ["--threads", "1", "encode", str(run), str(data), "-o", str(tmp_path / "x.vkc"),
                                 "--lossless"])
    assert r.exit_code == 0, r.output
    assert "3 hidden folder(s) or image file(s) (names beginning with '.') were not read" in r.output
    assert ".thumbs" in r.output and ".DS_Store" not in r.output
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(run), str(data), "--threshold", "0"])
    assert r.exit_code == 0 and "3 hidden folder(s)" in r.output, r.output


def test_a_folder_of_hidden_images_alone_says_so(tmp_path):
    only = tmp_path / "only"
    only.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(only / ".x.png")
    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(run), str(only)])
    assert r.exit_code == 2 and "no image files found" in r.output and ".x.png" in r.output, r.output
    assert "Traceback" not in r.output
