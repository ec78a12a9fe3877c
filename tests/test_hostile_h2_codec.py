"""What helper h2's hostile round found in the .vkc reader: a forged chunk table or a table of one
name repeated was refused only after every name was built and checked (seconds to minutes, GBs),
and `decode --overwrite` replaced the very code file it decoded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_codec_hostile import logistic_vkc
from test_hostile11_codec import _forge
from vaekit import codec, codes
from vaekit_cli.main import app
from vaekit.codec import container


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_h2")
    _, model, vkc = logistic_vkc(root)
    return root, model, vkc


def test_a_lossy_chunk_beyond_any_vaekit_writes_is_refused_before_the_names_are_expanded(setup, tmp_path, monkeypatch):
    # a 450 KB file naming 2,000,000 images in one lossy chunk built every name (12 s, +270 MB)
    # before "a chunk of 2000000 images" refused it: the chunk table alone says so
    root, model, vkc = setup
    header, _ = container.read_header(vkc)
    n = 20_000  # > max(CHUNK, chunk_images(1, 16)) = 12,288
    forged = _forge(vkc, tmp_path / "f.vkc", names=[f"{i}.png" for i in range(n)], orig_size=[[16, 16]] * n,
                    chunks=[[n, header.chunks[0][1]]])
    calls = []
    real = container.expand
    monkeypatch.setattr(container, "expand", lambda *a: (calls.append(1), real(*a))[1])
    with pytest.raises(container.ArchiveError, match=f"a chunk of {n} images"):
        codec.decode(model, forged, tmp_path / "out")
    assert not calls and not (tmp_path / "out").exists()


def test_a_name_repeated_is_refused_before_each_names_path_checks(setup, tmp_path, monkeypatch):
    # 10 million copies of "a" in 814 legal chunks (a 318 KB file, within 32 names a byte) took
    # 92 s and 1.2 GB to reach "two images would be written to the same file 'a.png'"
    root, model, vkc = setup
    header, _ = container.read_header(vkc)
    names = list(header.names)
    names[1] = names[0]
    forged = _forge(vkc, tmp_path / "f.vkc", names=names)
    checked = []
    real = container.check_name
    monkeypatch.setattr(container, "check_name", lambda *a: (checked.append(1), real(*a))[1])
    with pytest.raises(container.ArchiveError, match=f"names the image '{names[0]}' more than once") as e:
        codec.decode(model, forged, tmp_path / "out")
    assert e.value.exit_code == 2 and not checked and not (tmp_path / "out").exists()


@pytest.mark.parametrize("header", ["[1, 2]", '"text"', "7"])
def test_a_code_file_whose_header_is_no_object_is_named_so(tmp_path, header):
    # was "has an invalid header: list indices must be integers or slices, not str" (Python's words)
    import numpy as np

    from vaekit.codes import format as F

    cf = F.CodeFile(np.zeros((1, 4), np.float32), ["a.png"], np.array([[16, 16]], np.int32), "f32", "0" * 16, 16, 1)
    tensors = F._tensors(cf)
    meta = {"format": F.FORMAT, "version": "1", "header": header, "sha256": F._digest("1", header, tensors)}
    head, order = F.safetensors_layout(tensors, {k: list(v.shape) for k, v in tensors.items()}, meta)
    path = tmp_path / "x.codes"
    path.write_bytes(head + b"".join(F.little_endian(tensors[k]) for k in order))
    with pytest.raises(F.CodeFileError, match="has an invalid header: it is not a JSON object") as e:
        F.load(path)
    assert e.value.exit_code == 2


@pytest.fixture(scope="module")
def decodable(tmp_path_factory):
    """(run, a .vkc, a .codes) of the same 12 images."""
    root = tmp_path_factory.mktemp("decodable")
    run, model, vkc = logistic_vkc(root)
    return run, vkc, codes.encode_folder(model, root / "src", root / "a.codes", precision="f32").path


@pytest.mark.parametrize("kind", ["vkc", "codes"])
def test_decode_overwrite_never_replaces_the_file_it_decodes(decodable, tmp_path, kind):
    """A code file named img000.png decoded into its own folder with --overwrite was replaced by the
    PNG of its first image (exit 0; h2, 2026-12-08)."""
    run, vkc, cf = decodable
    folder = tmp_path / "here"
    folder.mkdir()
    first = vkc if kind == "vkc" else cf
    names = codec.read_info(vkc).names if kind == "vkc" else codes.load(cf).names
    own = folder / Path(names[0]).with_suffix(".png")
    own.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(first, own)
    before = own.read_bytes()
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(run), str(own), "-o", str(folder), "--overwrite"])
    assert r.exit_code == 2 and "it is the file being decoded" in " ".join(r.output.split()), r.output
    assert own.read_bytes() == before and sorted(p for p in folder.rglob("*") if p.is_file()) == [own]


@pytest.mark.parametrize("odd", [["a"], {"a": 1}])
def test_a_format_2_name_that_is_no_text_is_refused_not_a_traceback(setup, tmp_path, odd):
    # h5, 2026-12-08: the repeated names' check hashed every name first, and a forged format-2 file's
    # JSON names [["a"], ["b"]] raised "TypeError: unhashable type: 'list'" (decode: exit 3, "a bug in vaekit")
    import hashlib
    import json
    import lzma

    from vaekit.codec import header as H
    from vaekit.codes.format import CodeFileError

    root, model, vkc = setup
    real = codec.read_info(vkc)
    blob = b"\2" + lzma.compress(json.dumps({"names": [odd, "b.png"]}).encode(), lzma.FORMAT_RAW,
                                 filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}])
    head = b"".join([bytes([0, real.quality, real.channels]), H.varint(real.image_size), H.varint(real.latent_dim),
                     bytes.fromhex(real.fingerprint), bytes.fromhex(real.tables), H.varint(1), H.varint(2), H.varint(1),
                     H.varint(len(blob)), blob])
    body = b"VKC2" + H.varint(len(head)) + head + bytes(4)
    forged = tmp_path / "v2.vkc"
    forged.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[b"VKC2"]])
    with pytest.raises(CodeFileError, match="holds an unsafe image name") as e:
        codec.decode(model, forged, tmp_path / "out")
    assert e.value.exit_code == 2 and not (tmp_path / "out").exists()


def test_a_code_file_of_no_image_is_refused_as_a_vkc_of_none_is(decodable, tmp_path):
    """A forged .codes with 0 images decoded to an empty folder, exit 0, "wrote 0 images" (h2, 2026-12-08)."""
    import dataclasses

    run, vkc, cf = decodable
    real = codes.load(cf)
    empty = dataclasses.replace(real, codes=real.codes[:0], names=[], orig_size=real.orig_size[:0])
    codes.save(empty, tmp_path / "none.codes")
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(run), str(tmp_path / "none.codes"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "holds no image" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "out").exists()
