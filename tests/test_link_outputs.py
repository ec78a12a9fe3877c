"""Outputs that are links leading nowhere, and names whose journal would not fit: one line and
exit 2, never a traceback, and nothing written (found by the eleventh hostile round: every
command below ended in "RuntimeError: Symlink loop from ...", exit 3, or said only "File exists").

Real components: a tiny trained run on 16 px washers (tests/test_cli_anomaly.py's), the CLI
through Typer's runner.
"""

from __future__ import annotations

import os

import pytest

from test_cli_anomaly import washer_run
from cli_support import invoke, one_line_refusal


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = washer_run(tmp_path_factory, "links")
    r = invoke("encode", root / "run", root / "test" / "normal", "-o", root / "normal.vkc", "--quality", 3)
    assert r.exit_code == 0, r.output
    return root


def commands(parts, out):
    """Each command that writes, with its output at `out` (a folder) or under it (a file)."""
    run, images = parts / "run", parts / "test" / "normal"
    return {
        "train": ["train", parts / "train", "--out", out, "--epochs", 1],
        "export": ["export", run, "-o", out / "m.onnx"],
        "anomaly-score": ["anomaly-score", run, images, "-o", out / "s.csv"],
        "encode": ["encode", run, images, "-o", out / "c.codes"],
        "reconstruct": ["reconstruct", run, images, "-o", out],
        "decode": ["decode", run, parts / "normal.vkc", "-o", out],
        "sample": ["sample", run, "-n", 4, "-o", out / "s.png"],
        "sample-data": ["sample-data", "shapes", out],
    }


@pytest.mark.parametrize("command", ["train", "export", "anomaly-score", "encode", "reconstruct", "decode", "sample",
                                     "sample-data"])
def test_an_output_that_is_a_symbolic_link_loop_is_one_line(parts, tmp_path, command):
    os.symlink("loop", tmp_path / "loop")
    r = invoke(*commands(parts, tmp_path / "loop")[command])
    assert one_line_refusal(r), r.output
    assert "loop is a symbolic link loop" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]  # no journal, no staging, nothing


@pytest.mark.parametrize("command", ["train", "reconstruct", "decode", "sample-data"])
def test_an_output_folder_that_is_a_link_to_nothing_says_so(parts, tmp_path, command):
    # the OS says only "File exists" when asked to make a folder where a broken link stands
    os.symlink("nowhere", tmp_path / "dangling")
    r = invoke(*commands(parts, tmp_path / "dangling")[command])
    assert one_line_refusal(r), r.output
    assert "dangling is a link to nothing (nowhere)" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]


def test_an_output_whose_journal_name_would_be_too_long_is_refused_before_any_work(parts, tmp_path):
    # a 250-byte name fits; its journal NAME.partial does not, and the OS named the output
    out = tmp_path / ("n" * 246 + ".csv")
    r = invoke("anomaly-score", parts / "run", parts / "test" / "normal", "-o", out)
    assert one_line_refusal(r), r.output
    assert "would be a name of 258 bytes, more than the 255" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_share_whose_journal_name_would_be_too_long_is_refused_by_every_share(parts, tmp_path):
    # with 12 shares, share 1's journal (NAME.shard-1-of-12.partial) fits in 255 bytes and share 10's
    # does not: share 1 said "cannot read ...: File name too long; ... run them as one user"
    out = tmp_path / ("n" * 229 + ".csv")
    for share in ("1/12", "10/12"):
        r = invoke("anomaly-score", parts / "run", parts / "test" / "normal", "-o", out, "--shard", share)
        assert one_line_refusal(r), r.output
        assert "would be a name of 256 bytes, more than the 255" in r.output, r.output
        assert "run them as one user" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_cannot_be_resolved_for_another_reason_is_not_called_a_loop(tmp_path, monkeypatch):
    # Path.resolve's only OSError in non-strict mode but a loop's: the working folder removed
    from vaekit.errors import BadInput
    from vaekit.fileio import resolved

    monkeypatch.chdir(tmp_path)
    tmp_path.rmdir()
    with pytest.raises(BadInput) as e:
        resolved("out.csv")
    assert "loop" not in str(e.value) and "No such file or directory" in str(e.value), e.value
