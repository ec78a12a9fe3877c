"""An empty argument is refused before any command runs: a path "" is read as the current folder,
so `vaekit reconstruct RUN IMG -o "$OUT"` with OUT unset wrote into the folder the user stood in,
and `vaekit anomaly-score RUN "$DIR"` scored whatever images lay there (exit 0)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from export_support import random_job
from vaekit_cli.main import app

torch.set_num_threads(1)


@pytest.fixture()
def here(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(run, image, cwd): an untrained 16 px model, one image for it, and a current folder that
    holds an image of its own (what an empty path would reach)."""
    run, images = random_job(tmp_path / "job", 1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(cwd / "mine.png")
    monkeypatch.chdir(cwd)
    return run, sorted(images.iterdir())[0], cwd


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(args, says: str) -> None:
    r = CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300"})
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith("error:") and says in lines[0], r.output


def test_the_images_given_as_an_empty_argument_are_not_the_current_folder(here):
    run, _, cwd = here
    before = _listing(cwd)
    _refused(["anomaly-score", run, ""], "an argument is empty")
    _refused(["anomaly-score", run, "--", ""], "an argument is empty")  # after --, still a path
    assert _listing(cwd) == before


@pytest.mark.parametrize("how", [["-o", ""], ["--out="]])
def test_an_empty_output_writes_nothing_into_the_current_folder(here, how):
    run, image, cwd = here
    before = _listing(cwd)
    _refused(["reconstruct", run, image, *how], f"{how[0].rstrip('=')} is given an empty value")
    assert _listing(cwd) == before


def test_the_same_command_with_real_paths_still_runs(here, tmp_path):
    """The check looks at empty arguments only: the very command with a named output works."""
    run, image, cwd = here
    r = CliRunner().invoke(app, ["--threads", "1", "reconstruct", str(run), str(image), "-o", str(tmp_path / "rec")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rec" / image.name).is_file() and os.listdir(cwd) == ["mine.png"]


def _forged_device(vkc: Path, out: Path, device) -> Path:
    """`vkc` with its header's engine naming another device (and a checksum that fits)."""
    from test_hostile11_codec import _forge
    from vaekit.codec import container

    engine = dict(container.read_header(vkc)[0].engine, device=device)
    return _forge(vkc, out, engine=engine)


@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_a_lossless_archive_written_on_another_kind_of_device_is_refused_before_any_image(tmp_path, device):
    """It was decoded on the CPU until the first image's checksum failed (the message then blamed a
    damaged or desynchronised archive); now the header's device is compared first, and named."""
    import vaekit
    from vaekit import codec
    from vaekit.codec import bitsback

    run, images = random_job(tmp_path / "job", 3)
    model = vaekit.load(run)
    vkc = codec.encode(model, images, tmp_path / "a.vkc", lossless=True).path
    assert codec.read_info(vkc).engine["device"] == "cpu"
    codec.decode(model, vkc, tmp_path / "ok")  # the archive as written decodes
    forged = _forged_device(vkc, tmp_path / "f.vkc", device)
    with pytest.raises(bitsback.Desynchronised, match=f"written on {device}, but this decode runs on cpu; "
                                                      f"decode it with --device {device.split(':')[0]}"):
        codec.decode(model, forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for i, other in enumerate(("cpu\x1b[2J", "tpu", "mps")):  # no device vaekit runs on: not "--device tpu"
        with pytest.raises(Exception, match="damaged or foreign: it names the device"):
            codec.decode(model, _forged_device(vkc, tmp_path / f"g{i}.vkc", other), tmp_path / "out")


def test_a_header_put_on_another_models_journal_leaves_its_lines_damaged(tmp_path):
    """Each line's checksum covered its own bytes only, so this job's header on top of a journal
    another model wrote for the same files resumed, and OUT mixed both models' rows. The lines are
    keyed by their header now (journal format 5): such a journal is damaged at its first line."""
    from export_support import acting_model, interrupt, random_run
    from vaekit import anomaly

    _, images = random_job(tmp_path / "job", 12)
    runs = [random_run(tmp_path / name, image_size=16, channels=1, latent_dim=d, base_channels=4)
            for name, d in (("a", 4), ("b", 6))]
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for run, out in zip(runs, outs):  # each job stopped in its second batch: one batch journaled
        with pytest.raises(KeyboardInterrupt):
            anomaly.score_to_file(acting_model(run, "score", 2, interrupt), images, out, threshold=0.0, batch_size=4)
    a, b = (Path(f"{o}.partial").read_bytes().splitlines(keepends=True) for o in outs)
    assert len(a) == len(b) == 2 and a[0] != b[0]
    Path(f"{outs[1]}.partial").write_bytes(b[0] + a[1])  # b's header on a's rows
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(runs[1]), str(images), "-o", str(outs[1]),
                                 "--threshold", "0", "--batch-size", "4", "--resume"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "is damaged at line 2" in r.output and "another journal's line" in r.output, r.output
    assert not outs[1].exists()
    Path(f"{outs[1]}.partial").write_bytes(b[0] + b[1])  # its own lines back: it resumes
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(runs[1]), str(images), "-o", str(outs[1]),
                                 "--threshold", "0", "--batch-size", "4", "--resume"], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and outs[1].exists(), r.output


def test_a_resume_may_name_the_model_by_another_path_to_the_same_run(tmp_path, monkeypatch):
    """The journal kept the model's path as first typed (`job/run`), and a resume naming it
    `/abs/job/run` was refused ("model 'job/run' then, '/abs/job/run' now"), where inputs spelled
    another way were already accepted. Another run at another path is still refused."""
    from export_support import acting_model, interrupt, random_run
    from vaekit import anomaly

    monkeypatch.chdir(tmp_path)
    run, images = random_job(Path("job"), 12)
    out = Path("s.csv")
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(acting_model(run, "score", 2, interrupt), images, out, threshold=0.0, batch_size=4)

    def score(model, o, *more):
        return CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(model), str(images), "-o", str(o),
                                        "--threshold", "0", "--batch-size", "4", *more], env={"COLUMNS": "300"})

    other = random_run(tmp_path / "other", image_size=16, channels=1, latent_dim=4, base_channels=4)  # same weights
    r = score(other, out, "--resume")
    assert r.exit_code == 2 and "model" in r.output and "then" in r.output, r.output
    r = score(tmp_path / "job" / "run", out, "--resume")
    assert r.exit_code == 0, r.output
    assert score(run, "whole.csv").exit_code == 0
    assert out.read_bytes() == Path("whole.csv").read_bytes()
