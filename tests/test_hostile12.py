"""The twelfth hostile round: what the last closing note left alone (a .vkc whose chunk table is
damaged, links out of the web app's data root, the library's image size, non-finite thresholds,
links called files, a Train slot that leaked)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_codec import _digits
from vaekit.codec import container
from vaekit.codec.header import Reader, pack, varint
from vaekit_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- 1. a .vkc's chunk table is checked by the checksum before it is read --------------------

@pytest.fixture(scope="module")
def vkc(tmp_path_factory):
    """A run and a lossless .vkc of 12 images written by vaekit's own encode."""
    from export_support import random_run

    root = tmp_path_factory.mktemp("hostile12-vkc")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(root / "src", 12)
    r = invoke("encode", run, root / "src", "-o", root / "a.vkc", "--lossless")
    assert r.exit_code == 0, r.output
    return run, root / "a.vkc"


def _chunk_table(data: bytes) -> range:
    """The byte positions of a format-3 .vkc's chunk table (its count, then [images, words] pairs)."""
    r = Reader(data[4:])
    n = r.varint()
    offset = 4 + r.pos
    h = Reader(data[offset:offset + n])
    h.take(3), h.varint(), h.varint(), h.take(16)
    start = offset + h.pos
    for _ in range(h.varint()):
        h.varint(), h.varint()
    return range(start, offset + h.pos)


@pytest.mark.parametrize("flip", [0x01, 0x02, 0x40])
def test_a_flipped_byte_in_the_chunk_table_is_refused_by_the_checksum(vkc, tmp_path, flip):
    # a flipped bit in a chunk's word count was trusted before the checksum: "is truncated (2342
    # bytes, its header describes 2346)", of a file that had every byte it was written with
    run, path = vkc
    data = path.read_bytes()
    table = _chunk_table(data)
    assert len(table) >= 3  # the count, one chunk's images and its words
    for i in table:
        bad = bytearray(data)
        bad[i] ^= flip
        (tmp_path / "d.vkc").write_bytes(bytes(bad))
        r = invoke("decode", run, tmp_path / "d.vkc", "-o", tmp_path / "out")
        assert r.exit_code == 2, (i, r.output)
        assert "its checksum does not match its contents" in r.output, (i, r.output)
        assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
        assert not (tmp_path / "out").exists()


def test_a_file_cut_short_still_says_truncated_in_its_one_line(vkc, tmp_path):
    run, path = vkc
    data = path.read_bytes()
    (tmp_path / "cut.vkc").write_bytes(data[:-3])
    r = invoke("decode", run, tmp_path / "cut.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "truncated" in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_a_chunk_table_forged_with_a_fitting_checksum_is_an_invalid_header(vkc, tmp_path):
    # the checksum fits, so the file is as its writer made it: a table that describes another
    # length is named as the header's fault, not as truncation
    run, path = vkc
    header, offset = container.read_header(path)
    data = path.read_bytes()
    header.chunks = [[header.chunks[0][0], header.chunks[0][1] + 1]]
    head = pack(header)
    body = container.MAGIC + varint(len(head)) + head + data[offset:-container.DIGESTS[container.MAGIC]]
    (tmp_path / "f.vkc").write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[container.MAGIC]])
    r = invoke("decode", run, tmp_path / "f.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "has an invalid header: it describes a file of" in r.output
    assert not (tmp_path / "out").exists()
