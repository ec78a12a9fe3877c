"""What a hostile tester found in the codec and code-file paths: outputs that decode could never
write, refusals that left half an output behind, staging across filesystems, --fit storing tables
for a refused encode, a names bomb, batch-dependent code files and options silently ignored."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from test_codec import _digits
from vaekit import codec, codes
from vaekit.errors import BadInput
from vaekit_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def logistic_vkc(root: Path):
    """(run, model, vkc) under root: a logistic run with tables, 12 source images in root/src (4
    under sub/) and a lossy .vkc of them (quality 4)."""
    from export_support import random_run

    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    x = _digits(root / "src", 12)
    model = vaekit.load(run)
    codec.save_prior(run, codec.fit_prior(model, x), model)
    return run, model, codec.encode(model, root / "src", root / "a.vkc", quality=4).path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """logistic_vkc's run, model and .vkc, and a .codes of the same images."""
    root = tmp_path_factory.mktemp("hostile")
    run, model, vkc = logistic_vkc(root)
    codes.encode_folder(model, root / "src", root / "a.codes", precision="f32")
    return root, run, model, vkc, root / "a.codes"


def _clash(folder: Path) -> Path:
    """x.jpg (decoded to x.png) beside a folder x.png holding y.png."""
    (folder / "x.png").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "x.jpg")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(folder / "x.png" / "y.png")
    return folder


def test_a_file_name_that_another_output_needs_as_a_folder_is_refused():
    with pytest.raises(BadInput, match="'x.jpg'.*'x.png/y.png'"):
        codes.png_names(["x.jpg", "x.png/y.png"])
    assert codes.png_names(["x.jpg", "x/y.png"]) == ["x.png", "x/y.png"]  # x and x.png are apart


@pytest.mark.parametrize("how", [["--lossless"], ["--quality", "3"], ["--precision", "f32"]])
def test_encode_refuses_a_folder_whose_outputs_clash_with_a_folder(setup, tmp_path, how):
    root, run, *_ = setup
    src = _clash(tmp_path / "clash")
    out = tmp_path / ("c.codes" if "--precision" in how else "c.vkc")
    r = invoke("--threads", 1, "encode", run, src, "-o", out, *how)
    assert r.exit_code == 2 and "'x.jpg'" in r.output and "'x.png/y.png'" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def _in_the_way(out: Path, kind: str) -> None:
    out.mkdir()
    if kind == "file":
        (out / "sub").write_text("mine")  # where decode needs the folder sub/
    else:
        (out / "img001.png").mkdir()  # where decode needs the file img001.png


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("job", ["vkc", "codes", "reconstruct_to_folder"])
def test_a_refused_decode_or_reconstruct_writes_nothing(setup, tmp_path, job, kind):
    from vaekit.inference.reconstruct import reconstruct_to_folder

    root, run, model, vkc, cf = setup
    out = tmp_path / "out"
    _in_the_way(out, kind)
    before = sorted(p.name for p in out.iterdir())
    call = {"vkc": lambda: codec.decode(model, vkc, out), "codes": lambda: codes.decode_file(model, cf, out),
            "reconstruct_to_folder": lambda: reconstruct_to_folder(model, root / "src", out)}[job]
    with pytest.raises(BadInput, match=f"{'sub' if kind == 'file' else 'img001.png'}"):
        call()
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no journal, no staging folder


def test_a_refused_decode_is_one_line_without_errno_text(setup, tmp_path):
    root, run, model, vkc, cf = setup
    for i, archive in enumerate((vkc, cf)):
        out = tmp_path / f"o{i}"
        _in_the_way(out, "file")
        r = invoke("--threads", 1, "decode", run, archive, "-o", out)
        assert r.exit_code == 2 and "Errno" not in r.output and f"{out / 'sub'} is a file" in r.output, r.output
        assert sorted(p.name for p in out.iterdir()) == ["sub"]


def test_decode_stages_inside_the_output_folder_and_leaves_nothing_else(setup, tmp_path, monkeypatch):
    root, run, model, vkc, cf = setup
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda s, t: (seen.append(Path(s)), real(s, t))[1])
    r = codec.decode(model, vkc, tmp_path / "out")
    assert len(r.written) == 12 and all(s.is_relative_to(tmp_path / "out") for s in seen[-12:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_decode_across_filesystems_copies_instead_of_failing(setup, tmp_path, monkeypatch):
    """A target folder on another filesystem (a link, a mount point): os.replace fails with EXDEV."""
    root, run, model, vkc, cf = setup
    real = os.replace

    def cross(s, t):
        if ".vaekit-decode-" in str(s) and ".vaekit-decode-" not in str(t):  # staging -> target
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(s, t)

    monkeypatch.setattr(os, "replace", cross)
    r = codec.decode(model, vkc, tmp_path / "out")
    monkeypatch.setattr(os, "replace", real)
    again = codec.decode(model, vkc, tmp_path / "ref")
    for a, b in zip(r.written, again.written):
        assert a.read_bytes() == b.read_bytes()
    assert not [p for p in (tmp_path / "out").rglob(".*")]


def test_decode_across_filesystems_keeps_a_name_near_the_limit(setup, tmp_path, monkeypatch):
    """The cross-filesystem copy's temporary name was the output's name plus ~20 bytes: an image
    named near the 255-byte limit failed to decode there (h3, 2026-12-08)."""
    root, run, model, *_ = setup
    long = "n" * 246 + ".png"  # 250 bytes: a valid name, its old temporary one was not
    (tmp_path / "src").mkdir()
    shutil.copy(next((root / "src").glob("*.png")), tmp_path / "src" / long)
    vkc = codec.encode(model, tmp_path / "src", tmp_path / "long.vkc", quality=4).path

    def crossing(real):
        def cross(s, t, **kw):
            if ".vaekit-decode-" in str(s) and ".vaekit-decode-" not in str(t):  # staging -> target
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(s, t, **kw)
        return cross

    monkeypatch.setattr(os, "replace", crossing(os.replace))
    monkeypatch.setattr(os, "link", crossing(os.link))  # a new file is linked in place, not renamed
    r = codec.decode(model, vkc, tmp_path / "out")
    assert [p.name for p in r.written] == [long] and not [p for p in (tmp_path / "out").rglob(".*")]


def test_decode_through_a_link_to_another_filesystem(setup, tmp_path):
    root, run, model, vkc, cf = setup
    # /dev/shm is a tmpfs on Linux machines and containers; where it is missing the link still
    # crosses folders (the EXDEV copy itself is the test above's)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "elsewhere"
    shm.mkdir(exist_ok=True)
    target = shm / f"vaekit-test-{os.getpid()}-{tmp_path.name}"
    target.mkdir()
    try:
        (tmp_path / "link").symlink_to(target)
        r = invoke("--threads", 1, "decode", run, vkc, "-o", tmp_path / "link")
        assert r.exit_code == 0, r.output
        assert len(list(target.rglob("*.png"))) == 12 and not list(target.glob(".*"))
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _junk(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    return folder


@pytest.mark.parametrize("which", ["images", "fit"])
def test_a_fit_for_a_refused_encode_stores_nothing(setup, tmp_path, which):
    """--fit stored its tables, then the encode found no usable image; and a --fit folder of no
    usable image gave a numpy shape error."""
    root, run, *_ = setup
    shutil.copytree(run, tmp_path / "run")
    before = (tmp_path / "run" / "config.json").read_bytes()
    junk = _junk(tmp_path / "junk")
    _digits(tmp_path / "train", 20, seed=3)  # other tables than the run's
    images, fit = (junk, tmp_path / "train") if which == "images" else (root / "src", junk)
    r = invoke("--threads", 1, "encode", tmp_path / "run", images, "-o", tmp_path / "x.vkc", "--quality", 3, "--fit", fit)
    assert r.exit_code == 2 and f"no usable image in {junk}" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "posterior" not in r.output
    assert (tmp_path / "run" / "config.json").read_bytes() == before and not (tmp_path / "x.vkc").exists()


def test_a_fit_is_stored_once_the_file_is_written_and_decodes(setup, tmp_path):
    root, run, *_ = setup
    shutil.copytree(run, tmp_path / "run")
    r = invoke("--threads", 1, "encode", tmp_path / "run", root / "src", "-o", tmp_path / "x.vkc", "--quality", 3,
               "--fit", root / "src")
    assert r.exit_code == 0, r.output
    model = vaekit.load(tmp_path / "run")
    assert codec.read_info(tmp_path / "x.vkc").tables == codec.stored_prior(model).hash
    assert len(codec.decode(model, tmp_path / "x.vkc", tmp_path / "out").written) == 12


def test_a_fit_encode_does_not_replace_a_file_put_at_its_output_while_it_stored_the_tables(setup, tmp_path, monkeypatch):
    """encode --fit looked for a file at OUT, stored the tables, then renamed its file onto OUT: one put
    there in between (another encode, a user's) was replaced, exit 0. It is refused and kept."""
    from vaekit.codec import store

    root, run, *_ = setup
    shutil.copytree(run, tmp_path / "run")
    out, real = tmp_path / "x.vkc", store.save_prior

    def storing(*a, **kw):
        out.write_bytes(b"put there meanwhile")
        return real(*a, **kw)

    monkeypatch.setattr(store, "save_prior", storing)
    r = invoke("--threads", 1, "encode", tmp_path / "run", root / "src", "-o", out, "--quality", 3, "--fit", root / "src")
    assert r.exit_code == 2 and "x.vkc" in r.output, r.output
    assert out.read_bytes() == b"put there meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "x.vkc"]


@pytest.mark.parametrize("mode", [["--quality", "3"], ["--lossless"]])
def test_precision_with_a_vkc_is_refused(setup, tmp_path, mode):
    root, run, *_ = setup
    r = invoke("--threads", 1, "encode", run, root / "src", "-o", tmp_path / "x.vkc", *mode, "--precision", "f32")
    assert r.exit_code == 2 and "--precision" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x.vkc").exists()


@pytest.mark.parametrize("precision", ["f32", "q8"])
def test_a_code_file_is_the_same_bytes_for_the_same_images_model_and_batch_size(setup, tmp_path, precision):
    """docs/code-files.md: the same images, model and --batch-size give a byte-identical file
    (another --batch-size may move a mean in its last bit: a CPU kernel's rounding depends on it)."""
    root, run, model, *_ = setup
    _digits(tmp_path / "more", 40, seed=5)
    files = [codes.encode_folder(model, tmp_path / "more", tmp_path / f"b{i}.codes", precision=precision,
                                 batch_size=7).path.read_bytes() for i in range(2)]
    assert files[0] == files[1]


def _bomb(path: Path, fingerprint: str, names: int, images: int) -> Path:
    """A valid .vkc (checksum right) whose LZMA'd names expand to `names` names, for a chunk table of
    `images` images in chunks of at most 12,288 (the most vaekit writes at 16 px grey) of one word
    each: a table the reader takes, so that only the names are refused."""
    import hashlib
    import lzma

    from vaekit.codec import header as H

    raw = b"a.png" + b"\0a" * (names - 1)
    # a small dictionary encodes fast; the reader's larger one decodes it all the same
    blob = b"\2" + lzma.compress(raw, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}])
    counts = [min(12_288, images - i) for i in range(0, images, 12_288)]
    head = b"".join([bytes([0, 5, 1]), H.varint(16), H.varint(4), bytes.fromhex(fingerprint), bytes(8),
                     H.varint(len(counts)), *(H.varint(c) + H.varint(1) for c in counts), H.varint(len(blob)), blob])
    data = b"VKC3" + H.varint(len(head)) + head + bytes(4 * len(counts))
    path.write_bytes(data + hashlib.sha256(data).digest()[:8])
    return path


def test_a_names_bomb_is_refused_before_its_names_are_expanded(setup, tmp_path, monkeypatch):
    from vaekit.codec import container, header

    root, run, model, *_ = setup
    foreign = _bomb(tmp_path / "foreign.vkc", "00" * 8, 2_000_000, 2_000_000)
    calls = []
    real = header.expand
    monkeypatch.setattr(container, "expand", lambda *a: (calls.append(1), real(*a))[1])
    with pytest.raises(container.ArchiveModelMismatch, match="0000000000000000"):
        codec.decode(model, foreign, tmp_path / "out")
    assert not calls and not (tmp_path / "out").exists()
    ours = _bomb(tmp_path / "ours.vkc", model.info.fingerprint, 2_000_000, 1)  # names far beyond one image's
    with pytest.raises(container.ArchiveError, match="larger than"):
        codec.decode(model, ours, tmp_path / "out")
    with pytest.raises(container.ArchiveError, match="larger than"):
        codec.read_info(ours)
    assert not (tmp_path / "out").exists()


def test_names_that_claim_millions_of_images_expand_to_at_most_a_multiple_of_the_file(setup, tmp_path, monkeypatch):
    """A chunk table may claim 2,000,000 images (up to 2 GiB of names); a 7 KB file's names still
    stop at 4096 times its size (at least 1 MiB), not at 48 MB, however many images it claims."""
    from vaekit.codec import header

    root, run, model, *_ = setup
    seen = []
    real = header._inflate
    monkeypatch.setattr(header, "_inflate", lambda blob, limit, *rest: (seen.append(limit), real(blob, limit, *rest))[1])
    bomb = _bomb(tmp_path / "bomb.vkc", model.info.fingerprint, 24_000_000, 2_000_000)
    size = bomb.stat().st_size
    with pytest.raises(codec.ArchiveError, match="larger than"):
        codec.read_info(bomb)
    assert seen == [max(1 << 20, header.EXPANSION * size)] and seen[0] < 48_000_000
    assert header.names_limit(2_000_000) == header.MAX_META  # what the chunk table alone allowed


def test_a_table_of_millions_of_tiny_names_is_refused_before_one_str_is_built(setup, tmp_path, monkeypatch):
    """The byte bound let 2-byte names through: a 260 KB file of "a\\0" * 10**8 (LZMA'd) under a
    chunk table claiming 2**31 images built a Python str per name (~55 bytes each) before any
    count was checked, past 4 GB of memory (found by h3). The names are now counted as they are
    inflated, at most 16 per byte of the file, and against the chunk table before any str."""
    from vaekit.codec import header

    root, run, model, *_ = setup
    built = []
    real = header._split_names
    monkeypatch.setattr(header, "_split_names", lambda *a: (built.append(1), real(*a))[1])
    # (a chunk table of 2**31 - 1 images is refused before the names now, as no vaekit writes one:
    # test_hostile_h2_codec; 3,000,000 in legal chunks still reaches the names' count)
    bomb = _bomb(tmp_path / "tiny.vkc", model.info.fingerprint, 3_000_000, 3_000_000)
    assert bomb.stat().st_size < 3_000_000 // 16  # the file cannot hold that many names
    with pytest.raises(codec.ArchiveError, match=r"larger than the file can hold \(\d+ names at most\)"):
        codec.read_info(bomb)
    equal = _bomb(tmp_path / "count.vkc", model.info.fingerprint, 1000, 999)  # one name more than images
    with pytest.raises(codec.ArchiveError, match="it names 1000 images, but its chunks hold 999"):
        codec.read_info(equal)
    assert not built


def _named(path: Path, fingerprint: str, names: list[str], mode: int) -> Path:
    """A .vkc (checksum right) of `mode` (0 lossy, 1 lossless) naming `names`, LZMA'd, over one
    chunk of that many images and one word."""
    import hashlib
    import lzma

    from vaekit.codec import header as H

    raw = "\0".join(names).encode()
    blob = b"\2" + lzma.compress(raw, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}])
    head = b"".join([bytes([mode, 5 if mode == 0 else 0, 1]), H.varint(16), H.varint(4), bytes.fromhex(fingerprint),
                     bytes(8), H.varint(1), H.varint(len(names)), H.varint(1), H.varint(len(blob)), blob])
    data = b"VKC3" + H.varint(len(head)) + head + bytes(4)  # the chunk's one word
    path.write_bytes(data + hashlib.sha256(data).digest()[:8])
    return path


def test_distinct_names_beyond_what_the_file_could_pay_for_are_refused_before_the_targets(setup, tmp_path):
    """A lossless archive's chunk may claim any number of images: 472 KB of LZMA'd distinct names
    claimed 2,000,000, and decode built and checked every target (1.2 GB, minutes) before the
    first image's CRC failed (found by h3). An honest file pays for each image (0.5 bytes at
    least lossy, 3.4 lossless: names included), so it names at most 8 (lossy) or 1 (lossless)
    per byte of the file; more is refused as the header is read."""
    root, run, model, *_ = setup
    names = [f"{i}.png" for i in range(60_000)]
    lossless = _named(tmp_path / "ll.vkc", model.info.fingerprint, names, 1)
    assert 1024 < lossless.stat().st_size < len(names) < 8 * lossless.stat().st_size
    with pytest.raises(codec.ArchiveError, match=r"larger than the file can hold \(\d+ names at most\)"):
        codec.decode(model, lossless, tmp_path / "out")
    lossy = _named(tmp_path / "ly.vkc", model.info.fingerprint, names, 0)  # the same table may be honest lossy
    with pytest.raises(codec.ArchiveError) as e:
        codec.decode(model, lossy, tmp_path / "out")
    assert "larger than the file can hold" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_format_2_file_of_millions_of_tiny_json_names_is_refused_as_they_inflate(setup, tmp_path, monkeypatch):
    """Format 2 keeps the names in JSON: ["a","a",...] LZMA'd is the same bomb as format 3's
    NUL-separated table, json.loads building a str per name. Its quotes are counted as it inflates."""
    import hashlib
    import json
    import lzma

    from vaekit.codec import container, header as H

    root, run, model, *_ = setup
    import vaekit.fileio as fio

    parsed, real = [], fio.loads_json
    monkeypatch.setattr(fio, "loads_json", lambda *a, **k: (parsed.append(1), real(*a, **k))[1])
    raw = json.dumps({"names": ["a"] * 3_000_000}).encode()
    blob = b"\2" + lzma.compress(raw, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}])
    counts = [min(12_288, 3_000_000 - i) for i in range(0, 3_000_000, 12_288)]  # chunks the reader takes
    head = b"".join([bytes([0, 5, 1]), H.varint(16), H.varint(4), bytes.fromhex(model.info.fingerprint), bytes(8),
                     H.varint(len(counts)), *(H.varint(c) + H.varint(1) for c in counts), H.varint(len(blob)), blob])
    body = b"VKC2" + H.varint(len(head)) + head + bytes(4 * len(counts))
    bomb = tmp_path / "v2.vkc"
    bomb.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[b"VKC2"]])
    with pytest.raises(codec.ArchiveError, match=r"larger than the file can hold \(\d+ names at most\)"):
        codec.read_info(bomb)
    assert not parsed


def test_a_format_2_file_whose_names_hold_quotes_is_read(setup):
    """Format 2's JSON escapes a quote in a name as \\": 3,000 names of two quotes each held 12,002
    quote bytes, past 2 per name + V2_QUOTES, and an honest file was refused (review by h6)."""
    import json

    from vaekit.codec import header as H

    names = [f'"{i}".png' for i in range(3000)]
    blob = H._compress(json.dumps({"names": names}, separators=(",", ":")).encode())
    h = H.Header("lossy", "00" * 8, "00" * 8, 16, 1, 1, [], [], [[3000, 1]], 4)
    H.expand(h, blob, 2, 400_000)
    assert h.names == names


def test_encode_never_writes_a_file_that_decode_would_refuse_for_its_count_of_names(setup, tmp_path, monkeypatch):
    """The bound on names per byte is checked as the file is written too (review by h6: a bound of 8
    refused an honest file of 200,000 blank images that encode had written). Here the bound is
    lowered so that 1,030 images pass it: encode refuses and writes nothing."""
    from PIL import Image

    from vaekit.codec import container

    root, run, model, *_ = setup
    (tmp_path / "blank").mkdir()
    for i in range(1030):
        Image.new("L", (16, 16)).save(tmp_path / "blank" / f"{i}.png")
    monkeypatch.setattr(container, "NAMES_PER_BYTE", {"lossy": 0, "lossless": 0})
    with pytest.raises(ValueError, match=r"1030 images in \d+ bytes are more than a .vkc may name"):
        codec.encode(model, tmp_path / "blank", tmp_path / "b.vkc", quality=1)
    assert not (tmp_path / "b.vkc").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["blank"]
