"""Review 46, of the session that added lossless archives from every model and hardened resume,
outputs kept after a stop, the pixel cache's room and confined scans. Each test failed before
its fix.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the library's jobs and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vaekit
from export_support import random_job
from vaekit_cli.main import app

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("review46"), 5)


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300"})


def _one_line_exit_2(r) -> str:
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    return r.output


def _stopped_score(run: Path, images: Path, out: Path) -> Path:
    """A score job to `out` stopped after its first two batches (of 2 files): its journal."""
    from vaekit.anomaly.job import score_to_file

    def stop(done, total, **_):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_to_file(vaekit.load(run), images, out, batch_size=2, progress=stop)
    journal = out.with_name(out.name + ".partial")
    assert journal.is_file()
    return journal


@pytest.mark.parametrize("name", ["images\u0000x", "images\ud800"])
def test_a_journal_naming_an_input_no_path_can_be_is_refused_in_one_line(setup, tmp_path, name):
    """A journal header whose inputs hold a NUL (or an unpaired surrogate), damaged or forged: the
    resume's check whether the inputs were the same places spelled another way (stream.headers)
    called os.path.realpath on it, a ValueError traceback, exit 3. It is an input that differs,
    named, exit 2, as before that check."""
    run, images = setup
    journal = _stopped_score(run, images, tmp_path / "s.csv")
    lines = journal.read_text().split("\n")
    header = json.loads(lines[0])
    header["inputs"] = [name]
    journal.write_text("\n".join([json.dumps(header), *lines[1:]]))
    before = journal.read_bytes()
    r = invoke("anomaly-score", run, images, "-o", tmp_path / "s.csv", "--batch-size", 2, "--resume")
    assert "cannot resume" in _one_line_exit_2(r) and "input 1 was" in r.output
    assert journal.read_bytes() == before and not (tmp_path / "s.csv").exists()
