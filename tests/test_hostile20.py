"""Hostile inputs, pass 20: what earlier passes left (tests/test_hostile*.py).

Each test names the input and what vaekit must do with it: one line naming the problem, the
documented exit code, nothing written that vaekit did not create.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from vaekit.errors import BadInput
from vaekit.images.arrays import as_latents


def test_latents_beyond_float32_are_refused_as_such_without_a_numpy_warning():
    # 1e300 is finite: it overflowed in the cast to float32 (a RuntimeWarning), then was refused
    # as "NaN or infinity", a value the caller never gave
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadInput, match="float32") as e:
            as_latents(np.full((1, 2), 1e300), 2)
        assert "NaN" not in str(e.value)
        with pytest.raises(BadInput, match="finite"):
            as_latents(np.full((1, 2), np.inf), 2)
        np.testing.assert_array_equal(as_latents([[3e38, -3e38]], 2), np.array([[3e38, -3e38]], np.float32))


# --- a folder inside the output that is a link into an input folder or the run ----------------

def _linked_job(tmp_path):
    """(run, images, out): images/sub/img000.png and img001.png beside sub/, out/sub a link to images/sub."""
    from export_support import random_job

    run, images = random_job(tmp_path, 2)
    (images / "sub").mkdir()
    (images / "img000.png").rename(images / "sub" / "img000.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(images / "sub")
    return run, images, out


def test_reconstruct_overwrite_never_writes_an_input_through_a_link_in_the_output_folder(tmp_path):
    from cli_support import invoke, one_line_exit_2

    run, images, out = _linked_job(tmp_path)
    before = (images / "sub" / "img000.png").read_bytes()
    text = one_line_exit_2(invoke("reconstruct", run, images, "-o", out, "--overwrite"))
    assert "input folder" in text and "sub" in text
    assert (images / "sub" / "img000.png").read_bytes() == before  # was replaced by its reconstruction
    assert sorted(p.name for p in out.iterdir()) == ["sub"]


def test_heat_maps_never_replace_an_input_through_a_link_in_the_maps_folder(tmp_path):
    from cli_support import invoke, one_line_exit_2

    run, images, out = _linked_job(tmp_path)
    before = (images / "sub" / "img000.png").read_bytes()
    text = one_line_exit_2(invoke("anomaly-score", run, images, "--maps", out, "--threshold", 1, "--overwrite"))
    assert "input folder" in text and "sub" in text
    assert (images / "sub" / "img000.png").read_bytes() == before  # was replaced by its heat map


def test_decode_never_writes_into_the_run_through_a_link_in_the_output_folder(tmp_path):
    from cli_support import invoke, one_line_exit_2

    run, images, out = _linked_job(tmp_path)
    assert invoke("encode", run, images, "-o", tmp_path / "c.vkz").exit_code == 0
    (out / "sub").unlink()
    (out / "sub").symlink_to(run)  # decode would write run/img000.png
    before = sorted(p.name for p in run.iterdir())
    text = one_line_exit_2(invoke("decode", run, tmp_path / "c.vkz", "-o", out, "--overwrite"))
    assert "run directory" in text
    assert sorted(p.name for p in run.iterdir()) == before
    (out / "sub").unlink()
    assert invoke("decode", run, tmp_path / "c.vkz", "-o", out).exit_code == 0  # a real folder: as before
    assert (out / "sub" / "img000.png").is_file() and (out / "img001.png").is_file()


# --- a forged lossless .vkc --------------------------------------------------------------------

def _resealed(vkc: Path, out: Path, payload: bytes) -> Path:
    """`vkc` with other chunk words and a checksum that fits: a forged, not a damaged, file."""
    from vaekit.codec import container

    data = vkc.read_bytes()
    offset = container.read_header(vkc)[1]
    body = data[:offset] + payload
    out.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[container.MAGIC]])
    return out


def test_a_lossless_chunk_that_ends_in_a_zero_word_is_a_damaged_archive_not_a_bug(tmp_path):
    # constriction refuses such words as it is handed them ("ANS compressed data never ends in a
    # zero word"): that ValueError was raised outside the decoding's guard, exit 3 "a bug in vaekit"
    from cli_support import invoke, one_line_exit_2
    from test_codec_hostile import logistic_vkc
    from vaekit import codec
    from vaekit.codec import container

    run, model, _ = logistic_vkc(tmp_path)
    vkc = codec.encode(model, tmp_path / "src", tmp_path / "b.vkc", lossless=True).path
    data = vkc.read_bytes()
    words = data[container.read_header(vkc)[1]:len(data) - container.DIGESTS[container.MAGIC]]
    forged = _resealed(vkc, tmp_path / "f.vkc", words[:-4] + bytes(4))
    text = one_line_exit_2(invoke("decode", run, forged, "-o", tmp_path / "out"))
    assert "f.vkc" in text and "damaged" in text
    assert not (tmp_path / "out").exists()


# --- a stored name no file system can hold -----------------------------------------------------

LONE = "\ud800.png"  # JSON's "\ud800": a lone surrogate, not one of surrogateescape's bytes (U+DC80..U+DCFF)


def _code_file_naming(run: Path, images: Path, out: Path, name: str) -> Path:
    """A code file of `images` (vaekit's own bytes: format, header, checksum) with its first name `name`."""
    import vaekit
    from vaekit.codes import format as fmt

    from test_hostile11_codec import _forge_codes

    cf = fmt.load(vaekit.codes.encode_folder(vaekit.load(run), images, out.with_suffix(".orig")).path)
    cf.names[0] = name
    return _forge_codes(cf, out)


def test_a_code_file_naming_a_lone_surrogate_is_a_damaged_file_not_a_bug(tmp_path):
    # os.fsencode raised UnicodeEncodeError in the check of the names' lengths: exit 3, "a bug in vaekit"
    from cli_support import invoke, one_line_exit_2
    from export_support import random_job

    run, images = random_job(tmp_path, 2)
    forged = _code_file_naming(run, images, tmp_path / "f.codes", LONE)
    text = one_line_exit_2(invoke("decode", run, forged, "-o", tmp_path / "out"))
    assert "f.codes" in text and "name" in text
    assert not (tmp_path / "out").exists()


def test_a_format_2_vkc_naming_a_lone_surrogate_is_a_damaged_archive_not_a_bug(tmp_path):
    import json

    from cli_support import invoke, one_line_exit_2
    from test_codec_hostile import logistic_vkc
    from vaekit.codec import container
    from vaekit.codec.header import MODES, _compress, varint

    run, _, vkc = logistic_vkc(tmp_path)
    h, offset = container.read_header(vkc)
    data = vkc.read_bytes()
    words = data[offset:len(data) - container.DIGESTS[container.MAGIC]]
    blob = _compress(json.dumps({"names": [LONE, *h.names[1:]]}).encode())  # format 2: the names in the JSON
    head = b"".join([bytes([MODES.index(h.mode), h.quality or 0, h.channels]), varint(h.image_size),
                     varint(h.latent_dim), bytes.fromhex(h.fingerprint), bytes.fromhex(h.tables), varint(len(h.chunks)),
                     *(varint(v) for c in h.chunks for v in c), varint(len(blob)), blob])
    body = b"VKC2" + varint(len(head)) + head + words
    forged = tmp_path / "f.vkc"
    forged.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[b"VKC2"]])
    assert container.read_header(vkc)[0].names  # the file is read as far as its names
    text = one_line_exit_2(invoke("decode", run, forged, "-o", tmp_path / "out"))
    assert "f.vkc" in text and "name" in text
    assert not (tmp_path / "out").exists()


# --- a path with a NUL byte, through the Python API ---------------------------------------------

def test_a_path_holding_a_nul_is_bad_input_not_a_bare_value_error(tmp_path):
    # os.stat raised "ValueError: embedded null byte" from check_regular and refuse_existing (the
    # inputs were already refused as "no such file or folder"); the CLI cannot pass a NUL, the API can
    import vaekit
    from export_support import random_job
    from vaekit import anomaly, codes
    from vaekit.errors import VaekitError

    run, images = random_job(tmp_path, 2)
    model = vaekit.load(run)
    code_file = codes.encode_folder(model, images, tmp_path / "a.codes").path
    calls = [lambda: codes.decode_file(model, str(code_file) + "\0", tmp_path / "out"),
             lambda: codes.encode_folder(model, images, tmp_path / "b\0.codes"),
             lambda: anomaly.score_to_file(model, images, tmp_path / "s\0.csv", threshold=1.0),
             lambda: anomaly.score_to_file(model, images, tmp_path / "s.csv", maps=tmp_path / "m\0", threshold=1.0)]
    for call in calls:
        with pytest.raises(VaekitError, match="NUL") as e:
            call()
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.codes", "images", "run"]


# --- the web app's options ------------------------------------------------------------------------

def test_demo_refuses_a_runs_dir_that_is_a_file_before_it_serves(tmp_path):
    # it served, and the Train tab could then write no run under it; run in a process of its own
    # with a timeout, since a demo that starts serves until it is stopped
    import subprocess
    import sys

    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    r = subprocess.run([sys.executable, "-m", "vaekit", "demo", "--runs-dir", str(note), "--port", "1"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "runs-dir" in r.stderr and "is a file" in r.stderr
    assert note.read_text() == "mine\n"


def test_reconstruct_into_a_folder_holding_the_input_folder_never_replaces_an_input(tmp_path):
    # `reconstruct OUT/IMGS -o OUT`: IMGS/IMGS/a.png is written to OUT/IMGS/a.png, itself an input
    # (no link needed); --overwrite replaced it with the other image's reconstruction
    from cli_support import invoke, one_line_exit_2
    from export_support import random_job

    run, images = random_job(tmp_path / "out", 2)  # out/images/img000.png, img001.png
    (images / "images").mkdir()
    (images / "img001.png").rename(images / "images" / "img000.png")
    before = (images / "img000.png").read_bytes()
    text = one_line_exit_2(invoke("reconstruct", run, images, "-o", tmp_path / "out", "--overwrite"))
    assert "input folder" in text
    assert (images / "img000.png").read_bytes() == before
