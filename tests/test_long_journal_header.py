"""A resume whose journal header is longer than MAX_HEADER_BYTES (every input named on the command
line: ~12,000 files of ~100-character paths from a shell glob) goes on in the journal's batches and
takes the journal's spellings, like a resume of a shorter one. Its header was read with
MAX_HEADER_BYTES and skipped as unreadable, so `anomaly-score ... --resume` without --batch-size was
refused ("batch_size 8 then, 64 now"), and so was the model named by another path."""

import json

from vaekit.stream import headers
from vaekit.stream.journals import JOURNAL_VERSION
from vaekit.stream.lines import MAX_HEADER_BYTES
from vaekit.version import __version__


def _journal(tmp_path, inputs, model):
    out = tmp_path / "scores.csv"
    header = {"vaekit_journal": JOURNAL_VERSION, "vaekit": __version__, "job": "anomaly-score", "model": model,
              "batch_size": 8, "inputs": inputs}
    (tmp_path / "scores.csv.partial").write_text(json.dumps(header) + "\n")
    return out


def test_a_header_longer_than_a_mib_still_gives_its_batch_size_and_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    inputs = [f"images/{'d' * 90}/x{i:05d}.png" for i in range(12_000)]
    out = _journal(tmp_path, inputs, "run")
    assert (tmp_path / "scores.csv.partial").stat().st_size > MAX_HEADER_BYTES
    assert headers.journal_batch_size(out, (0, 1)) == 8
    assert headers.resumed_batch_size(None, True, out, (0, 1)) == 8
    assert headers.journaled_model(str(tmp_path / "run"), out, (0, 1)) == "run"


def test_a_short_header_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    out = _journal(tmp_path, ["images"], "run")
    assert headers.journal_batch_size(out, (0, 1)) == 8
    assert headers.journaled_model(str(tmp_path / "run"), out, (0, 1)) == "run"
