"""A refused job leaves nothing behind: no `OUT.partial` that would block the next run (even with
--overwrite); no output goes into the model's own files (its run directory, its .onnx); and a
journal number too large for a float is a damaged journal, not an OverflowError.

Real components: an untrained 16 px model, PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vaekit
from export_support import random_job, random_run
from hostile import flat, tree
from vaekit import anomaly
from vaekit.errors import BadInput, DamagedFile
from vaekit.inference.engine_onnx import refuse_model_files
from vaekit.inference import reconstruct
from cli_support import invoke

N_IMAGES = 10  # batch size 4: 3 batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("refusals"), N_IMAGES)


def said(r, text: str) -> bool:
    return flat(text) in flat(r.output)


def partial(out: Path) -> Path:
    return Path(f"{out}.partial")


# --- 1: every refusal before the journal ---------------------------------------------------------

def test_a_taken_heat_map_is_refused_without_a_journal_and_overwrite_then_works(setup, tmp_path):
    run, data = setup
    out, maps = tmp_path / "mp.csv", tmp_path / "mp"
    maps.mkdir()
    shutil.copy(data / "img002.png", maps / "img002.png")
    r = invoke("anomaly-score", run, data, "-o", out, "--maps", maps, "--batch-size", "4")
    assert r.exit_code == 2 and said(r, "heat map file(s) already exist"), r.output
    assert not partial(out).exists() and not out.exists()
    assert invoke("anomaly-score", run, data, "-o", out, "--maps", tmp_path / "mp2").exit_code == 0
    out.unlink()
    r = invoke("anomaly-score", run, data, "-o", out, "--maps", maps, "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.exists() and not partial(out).exists() and len(list(maps.glob("*.png"))) == N_IMAGES


def test_a_taken_reconstruction_is_refused_without_a_journal_and_overwrite_then_works(setup, tmp_path):
    run, data = setup
    dest = tmp_path / "rec"
    dest.mkdir()
    shutil.copy(data / "img005.png", dest / "img005.png")
    r = invoke("reconstruct", run, data, "-o", dest, "--batch-size", "4")
    assert r.exit_code == 2 and said(r, "already exist"), r.output
    assert not partial(dest).exists() and not (dest / "comparison.png").exists()
    r = invoke("reconstruct", run, data, "-o", dest, "--batch-size", "4", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (dest / "comparison.png").exists() and not partial(dest).exists()


def stops_at_call(model, method: str, n: int):
    """`model` whose `method` raises KeyboardInterrupt (a Ctrl-C) on its n-th call, mid-job."""
    real, calls = getattr(model, method), []

    def dying(x, **kw):
        calls.append(len(x))
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(x, **kw)

    setattr(model, method, dying)
    return model


def test_a_job_stopped_before_its_first_batch_leaves_no_journal(setup, tmp_path):
    """Whatever stops a fresh job before its first batch (an ONNX part of another model raises
    there) leaves no OUT.partial: the next run needs no --resume."""
    run, data = setup
    out, dest = tmp_path / "s.csv", tmp_path / "rec"
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(stops_at_call(vaekit.load(run), "score", 1), data, out, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        reconstruct.reconstruct_to_folder(stops_at_call(vaekit.load(run), "reconstruct", 1), data, dest, batch_size=4)
    assert not partial(out).exists() and not partial(dest).exists()
    assert anomaly.score_to_file(vaekit.load(run), data, out, batch_size=4).count == N_IMAGES
    assert len(reconstruct.reconstruct_to_folder(vaekit.load(run), data, dest, batch_size=4).names) == N_IMAGES


def test_a_job_stopped_after_a_batch_keeps_its_journal(setup, tmp_path):
    run, data = setup
    out = tmp_path / "s.csv"
    stopped_score(run, data, out)
    assert partial(out).exists()
    assert anomaly.score_to_file(vaekit.load(run), data, out, threshold=0.0, batch_size=4, resume=True).resumed == 1


@pytest.mark.slow
def test_an_onnx_model_with_another_models_encoder_leaves_no_journal(setup, tmp_path):
    from vaekit.export import export

    run, data = setup
    other = random_run(tmp_path / "other", image_size=16, channels=1, latent_dim=4, base_channels=8)
    export(run, tmp_path / "a" / "m.onnx")
    export(other, tmp_path / "b" / "m.onnx")
    own = (tmp_path / "a" / "m.encoder.onnx").read_bytes()
    shutil.copy(tmp_path / "b" / "m.encoder.onnx", tmp_path / "a" / "m.encoder.onnx")
    dest = tmp_path / "rec"
    r = invoke("reconstruct", tmp_path / "a" / "m.onnx", data, "-o", dest)
    assert r.exit_code == 2 and said(r, "belongs to another model"), r.output
    assert not partial(dest).exists()
    (tmp_path / "a" / "m.encoder.onnx").write_bytes(own)
    r = invoke("reconstruct", tmp_path / "a" / "m.onnx", data, "-o", dest)
    assert r.exit_code == 0 and not partial(dest).exists(), r.output


# --- 2: no output into the model's own files ----------------------------------------------------

@pytest.mark.parametrize("args", [
    ("anomaly-score", "{run}", "{data}", "-o", "{run}/config.json", "--overwrite"),
    ("anomaly-score", "{run}", "{data}", "-o", "{run}/scores.csv"),
    ("anomaly-score", "{run}", "{data}", "-o", "{tmp}/s.csv", "--maps", "{run}", "--overwrite"),
    ("anomaly-score", "{run}", "{data}", "--maps", "{run}/maps"),
    ("reconstruct", "{run}", "{data}", "-o", "{run}", "--overwrite"),
    ("reconstruct", "{run}", "{data}", "-o", "{run}/rec"),
])
def test_outputs_inside_the_run_directory_are_refused_and_change_nothing(setup, tmp_path, args):
    run, data = setup
    before = tree(run)
    r = invoke(*(a.format(run=run, data=data, tmp=tmp_path) for a in args))
    assert r.exit_code == 2 and said(r, f"inside the model's run directory {run}"), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert tree(run) == before and not list(tmp_path.iterdir())


def test_the_api_refuses_outputs_in_the_models_files(setup, tmp_path):
    run, data = setup
    model = vaekit.load(run)
    with pytest.raises(BadInput, match="run directory"):
        anomaly.score_to_file(model, data, run / "config.json", overwrite=True)
    with pytest.raises(BadInput, match="run directory"):
        reconstruct.reconstruct_to_folder(model, data, run / "rec", overwrite=True)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    for taken in ("m.onnx", "m.encoder.onnx", "m.decoder.onnx"):
        with pytest.raises(BadInput, match="is a file of the model"):
            refuse_model_files(tmp_path / taken, onnx, "output")
    for free in ("m.csv", "other.onnx", "rec"):
        refuse_model_files(tmp_path / free, onnx, "output")


# --- 3: a number too large for a float in a journal ---------------------------------------------

def stopped_score(run, data, out) -> None:
    """An anomaly-score job stopped (Ctrl-C) in its second batch: OUT.partial holds one batch."""
    model = stops_at_call(vaekit.load(run), "score", 2)
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4)


def _inflate(journal: Path, key: str) -> None:
    # the line signed again (vaekit.stream.lines), as a forger would: its rows are still checked
    from vaekit.stream import lines

    header, *entries = [json.loads(line) for line in journal.read_text().splitlines()]
    entries = [{k: v for k, v in e.items() if k != lines.FIELD} for e in entries]
    entries[0]["rows"][0][key] = 10**400
    head = (json.dumps(header) + "\n").encode()
    journal.write_bytes(head + b"".join(lines.encode(e, lines.key(head)) for e in entries))


@pytest.mark.parametrize("key", ["score", "neg_elbo", "kl"])
def test_a_400_digit_score_in_a_journal_is_a_damaged_journal(setup, tmp_path, key):
    run, data = setup
    out = tmp_path / "s.csv"
    stopped_score(run, data, out)
    _inflate(partial(out), key)
    with pytest.raises(DamagedFile, match=r"damaged at line 2: .*out of range") as e:
        anomaly.score_to_file(vaekit.load(run), data, out, threshold=0.0, batch_size=4, resume=True)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", "--resume")
    assert r.exit_code == 2 and said(r, "is damaged at line 2") and not out.exists(), r.output


def test_a_400_digit_psnr_in_a_reconstruct_journal_is_a_damaged_journal(setup, tmp_path):
    run, data = setup
    dest = tmp_path / "rec"
    model = stops_at_call(vaekit.load(run), "reconstruct", 2)
    with pytest.raises(KeyboardInterrupt):
        reconstruct.reconstruct_to_folder(model, data, dest, batch_size=4)
    _inflate(partial(dest), "psnr")
    with pytest.raises(DamagedFile, match=r"damaged at line 2: .*out of range"):
        reconstruct.reconstruct_to_folder(vaekit.load(run), data, dest, batch_size=4, resume=True)


# --- folders reached through a link are inputs too ------------------------------------------------

def test_no_output_goes_into_a_folder_the_inputs_reach_through_a_link(setup, tmp_path):
    """R/L links to T: T's images are read as inputs (R/L/sub/y.png), so writing into T would
    replace an input (and the next run would read the outputs back). Refused like a root."""
    run, data = setup
    inputs, target = tmp_path / "R", tmp_path / "T"
    (inputs / "sub").mkdir(parents=True)
    (target / "sub").mkdir(parents=True)
    shutil.copy(data / "img000.png", inputs / "sub" / "y.png")
    shutil.copy(data / "img001.png", target / "sub" / "y.png")
    (inputs / "L").symlink_to(Path("..") / "T", target_is_directory=True)
    before = tree(target)
    for args in (["reconstruct", run, inputs, "-o", target, "--overwrite"],
                 ["anomaly-score", run, inputs, "-o", tmp_path / "x.csv", "--maps", target, "--overwrite"],
                 ["anomaly-score", run, inputs, "-o", target / "scores.csv"],
                 ["encode", run, inputs, "-o", target / "codes.vkc", "--quality", "4"]):
        r = invoke(*args)
        assert r.exit_code == 2 and (said(r, "inside the input") or said(r, "is the input")), (args, r.output)
    assert tree(target) == before
    assert not (tmp_path / "x.csv").exists()
