"""encode's default batch is bounded by its codes' bytes: a batch's codes are one journal line,
held whole (256 codes of a 512 px grid model were a 180 MB line and 2.5 GB at the peak)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import built_once
import vaekit
from vaekit.codes import batch_size as batches, jobs
from vaekit.stream import job


@pytest.fixture(scope="module")
def washers(tmp_path_factory) -> Path:
    return built_once.washers(tmp_path_factory, tmp_path_factory.mktemp("encode-batch"))


def journal_settings(monkeypatch) -> list[dict]:
    """The settings each encode opens its journal with, as they are recorded."""
    seen, real = [], job.open_journal

    def spy(out, settings, *rest, **kw):
        seen.append(dict(settings))
        return real(out, settings, *rest, **kw)

    monkeypatch.setattr(job, "open_journal", spy)  # every streaming job opens its journal there
    return seen


def test_the_default_batch_holds_at_most_line_code_bytes_of_codes_and_writes_the_same_file(washers, tmp_path,
                                                                                            monkeypatch):
    model = vaekit.load(washers / "run", device="cpu")
    latent = model.info.latent_dim
    assert batches.default_batch_size(latent) == batches.BATCH_SIZE  # a small model's codes: 256 a batch, as before
    seen = journal_settings(monkeypatch)
    whole = jobs.encode_folder(model, washers / "train", tmp_path / "whole.codes", batch_size=256)
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 3 * batches.mu_bytes(latent) + 1)  # room for three codes a line
    small = jobs.encode_folder(model, washers / "train", tmp_path / "small.codes")
    assert [s["batch_size"] for s in seen] == [256, 3]
    assert small.count == whole.count == 20
    assert (tmp_path / "small.codes").read_bytes() == (tmp_path / "whole.codes").read_bytes()


def test_the_cli_takes_the_bounded_default_and_an_explicit_batch_size(washers, tmp_path, monkeypatch):
    from cli.main import app

    seen = journal_settings(monkeypatch)
    latent = vaekit.load(washers / "run", device="cpu").info.latent_dim
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 8 * batches.mu_bytes(latent) + 1)  # eight codes a line
    for extra in ([], ["--batch-size", "7"]):  # the bounded default, and a smaller one asked for
        out = tmp_path / f"c{len(extra)}.codes"
        r = CliRunner().invoke(app, ["encode", str(washers / "run"), str(washers / "train"), "-o", str(out), *extra,
                                     "--device", "cpu"])
        assert r.exit_code == 0, r.output
    assert [s["batch_size"] for s in seen] == [8, 7]
