"""What the eleventh hostile round found in the codec, the export and image reading: .vkc files
whose chunk table claims what vaekit never writes (millions of empty chunks, no image at all)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import vaekit
from test_codec_hostile import logistic_vkc
from vaekit import codec
from vaekit.codec import container
from vaekit.codec.header import pack, varint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A logistic run with tables, 12 source images and a lossy .vkc of them."""
    root = tmp_path_factory.mktemp("hostile11")
    _, model, vkc = logistic_vkc(root)
    return root, model, vkc


@pytest.fixture(scope="module")
def lossless(setup):
    root, model, _ = setup
    return codec.encode(model, root / "src", root / "b.vkc", lossless=True).path


def _forge(vkc: Path, out: Path, payload: bytes | None = None, **change) -> Path:
    """`vkc` with its header's fields changed (and a checksum that fits): a forged, not a damaged, file."""
    header, offset = container.read_header(vkc)
    data = vkc.read_bytes()
    if payload is None:
        payload = data[offset:len(data) - container.DIGESTS[container.MAGIC]]
    for k, v in change.items():
        setattr(header, k, v)
    head = pack(header)
    body = container.MAGIC + varint(len(head)) + head + payload
    out.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[container.MAGIC]])
    return out


def test_empty_chunks_in_a_forged_chunk_table_are_refused_before_any_is_decoded(setup, tmp_path):
    # 3 million empty chunks in a 6 MB file took ~30 minutes of CPU and 800 MB to "decode" (each
    # empty chunk still walked every residual context): vaekit never writes a chunk without images
    # or words, so the table is refused as it is read
    root, model, vkc = setup
    chunks = container.read_header(vkc)[0].chunks
    forged = _forge(vkc, tmp_path / "f.vkc", chunks=[[0, 0]] * 1000 + chunks)
    with pytest.raises(container.ArchiveError, match="empty chunk"):
        codec.decode(model, forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_of_no_images_is_refused_not_decoded_into_an_empty_folder(setup, tmp_path):
    root, model, vkc = setup
    forged = _forge(vkc, tmp_path / "f.vkc", b"", names=[], orig_size=[], chunks=[])
    with pytest.raises(container.ArchiveError, match="no image"):
        codec.decode(model, forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", [[], {"engine": {"a": 1}}, {"engine": "x" * 5000}, {"engine": None}])
def test_a_lossless_archive_naming_no_engine_vaekit_has_is_called_damaged_not_another_engines(setup, lossless, tmp_path,
                                                                                             engine):
    # was "a lossless archive written with the None engine; decode it with that engine (the exported
    # .onnx)", or the 5000 x's in full: a forged or damaged engine is named as such, in one short line
    root, model, _ = setup
    forged = _forge(lossless, tmp_path / "f.vkc", engine=engine)
    with pytest.raises(container.ArchiveError, match="has an invalid header") as e:  # as every forged header is
        codec.decode(model, forged, tmp_path / "out")
    assert len(str(e.value)) < 300 and "decode it with that engine" not in str(e.value)
    assert not (tmp_path / "out").exists()


def _forge_codes(cf, out: Path) -> Path:
    """The code file `cf` written as vaekit would, without validating it first: a forged file."""
    from vaekit.codes import format as F

    header, tensors = F.header_json(cf), F._tensors(cf)
    meta = {"format": F.FORMAT, "version": str(F.VERSION), "header": header,
            "sha256": F._digest(str(F.VERSION), header, tensors)}
    head, order = F.safetensors_layout(tensors, {k: list(v.shape) for k, v in tensors.items()}, meta)
    out.write_bytes(head + b"".join(F.little_endian(tensors[k]) for k in order))
    return out


@pytest.mark.parametrize("how", ["q8 overflow", "f32 nan", "f16 inf"])
def test_a_code_file_whose_latents_are_not_finite_is_a_damaged_file_named_in_one_line(setup, tmp_path, how):
    # a q8 scale of 3e38 printed numpy's "RuntimeWarning: overflow encountered in multiply" (two
    # lines with a source line of vaekit's) before "error: latent codes must be finite", which
    # named no file; NaN codes the same without the warning
    import dataclasses
    import warnings

    import numpy as np
    from typer.testing import CliRunner

    from vaekit import codes
    from vaekit_cli.main import app

    root, model, _ = setup
    cf = codes.load(codes.encode_folder(model, root / "src", tmp_path / "a.codes").path)
    if how == "q8 overflow":
        bad = dataclasses.replace(cf, scale=np.full_like(cf.scale, 3e38), offset=np.full_like(cf.offset, 3e38))
    else:
        dtype, value = (np.float32, np.nan) if how == "f32 nan" else (np.float16, np.inf)
        bad = dataclasses.replace(cf, codes=np.full(cf.codes.shape, value, dtype), precision=how[:3], scale=None,
                                  offset=None)
    forged = _forge_codes(bad, tmp_path / "f.codes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(codes.CodeFileError, match="f.codes.*not finite"):
            codes.decode_file(model, forged, tmp_path / "out")
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(model.info.source), str(forged), "-o",
                                 str(tmp_path / "out")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "f.codes" in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_an_export_named_so_that_a_part_would_be_too_long_is_refused_in_one_line_before_the_trace(tmp_path):
    # a 250-byte main name: NAME.encoder.onnx is 258 bytes; `p.is_dir()` on it raised ENAMETOOLONG,
    # a traceback and exit 3
    from typer.testing import CliRunner

    from export_support import random_run
    from vaekit.errors import BadInput
    from vaekit.export import export
    from vaekit_cli.main import app

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    out = tmp_path / "out" / ("x" * 245 + ".onnx")
    with pytest.raises(BadInput, match="255 bytes"):
        export(run, out)
    r = CliRunner().invoke(app, ["--threads", "1", "export", str(run), "-o", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output and "255 bytes" in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole export: left out by `dev.py test --fast`, as tests/test_export.py is
def test_an_export_named_near_the_length_limit_is_written(tmp_path):
    # a 230-byte name fits, and so do its parts (238 bytes), but its staging folder
    # (.NAME.vaekit-export-PID-TOKEN.tmp) did not: "cannot write ...: File name too long" after the trace
    from export_support import random_run
    from vaekit.export import export
    from vaekit.inference.engine_onnx import part_paths

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    out = tmp_path / "out" / ("y" * 225 + ".onnx")
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 16, 16), dtype=np.uint8)
    export(run, out, images=images)
    assert out.is_file() and part_paths(out)["encoder"].is_file() and part_paths(out)["decoder"].is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in [out, part_paths(out)["encoder"],
                                                                                   part_paths(out)["decoder"]])
    assert vaekit.load(out).info.fingerprint == vaekit.load(run).info.fingerprint


@pytest.mark.parametrize("mode", ["lossy", "lossless"])
def test_a_vkc_named_near_the_length_limit_is_written(setup, tmp_path, mode):
    # a 250-byte name fits a file system, but its spill file (.NAME.PID-TOKEN.chunks) did not:
    # "cannot write .NAME...chunks: File name too long", naming a file the user never gave
    root, model, _ = setup
    out = tmp_path / ("v" * 246 + ".vkc")
    kw = {"lossless": True} if mode == "lossless" else {"quality": 3}
    codec.encode(model, root / "src", out, **kw)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert len(codec.decode(model, out, tmp_path / "dec").written) == 12


def test_a_stored_name_whose_staged_path_would_pass_path_max_is_refused_before_writing(setup, tmp_path):
    # a name whose output path fits in 4,095 bytes, by 10, passed every check, but written inside
    # the output folder's staging folder its path did not: ENAMETOOLONG, a traceback, exit 3
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    root, model, vkc = setup
    names = container.read_header(vkc)[0].names
    out = tmp_path / "out"
    room = 4095 - len(str(out)) - 1 - 10  # the target itself fits, by 10 bytes
    deep = "/".join(["d" * 200] * (room // 201)) + "/" + "e" * (room % 201 - 5) + ".png"
    forged = _forge(vkc, tmp_path / "f.vkc", names=[deep, *names[1:]])
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(model.info.source), str(forged), "-o", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output and "4095 bytes" in r.output.replace("\n", ""), r.output
    assert not out.exists()
