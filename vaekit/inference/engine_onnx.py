"""The onnxruntime engine: an exported model behind vaekit's Model interface, no torch.

Opens the files `vaekit export` writes (see vaekit/export/): the scorer `parts.onnx`,
which `vaekit.load` is given, and `parts.encoder.onnx` / `parts.decoder.onnx` next to it,
opened when first needed, so a machine that only scores needs only the one file; a surface
model's defect reader, `parts.reader.onnx`, gives its default score where it is present. Imports
numpy, json and onnxruntime (lazily) only: never torch, never onnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.inference.engine import Model, ModelInfo, threshold_fields
from vaekit.errors import BadInput, DamagedFile, ForeignModel, NotFound, VaekitError, missing_extra
from vaekit.inference.onnx_session import NCHWC_SLOW_OPS, graph_session, providers, session_options  # noqa: F401
from vaekit.fileio import check_regular, finite_number, is_inside, kind_of, loads_json

CHECKSUM_KEY = "vaekit.sha256"  # sha256 of the file, computed with CHECKSUM_PLACEHOLDER in its place
CHECKSUM_PLACEHOLDER = "0" * 64
FORMAT = "vaekit-onnx/1"  # metadata "vaekit.format" of every file vaekit.export writes
MAX_BYTES = (1 << 31) - 1  # protobuf's limit for one message: an ONNX file without external data is never larger
_INPUTS = {"scorer": ("x", "eps"), "encoder": ("x",), "decoder": ("z",), "reader": ("x",)}
_OUTPUTS = {"scorer": ("recon", "kl", "pixel_map", "mu", "logvar"), "encoder": ("mu", "logvar"), "decoder": ("image",),
            "reader": ("logits",)}


class OnnxModelError(DamagedFile):
    """A file that is not a (complete) vaekit ONNX export."""


class ForeignOnnx(OnnxModelError, ForeignModel):
    """An ONNX file that vaekit did not export."""


def part_paths(main: str | Path) -> dict[str, Path]:
    """The files of an export named by its main file: parts.onnx -> parts.{encoder,decoder,reader}.onnx
    (the reader only for a surface model with a defect reader)."""
    main = Path(main)
    stem = main.name[: -len(".onnx")] if main.name.endswith(".onnx") else main.name
    return {"scorer": main, **{role: main.with_name(f"{stem}.{role}.onnx") for role in ("encoder", "decoder", "reader")}}


def refuse_model_files(output: Path, model: Path, what: str) -> None:
    """BadInput when `output` is, or lies inside, the model's run directory, or is one of its
    exported files (NAME.onnx and the parts beside it): with --overwrite it would replace the
    model being used (its config.json, its weights)."""
    model = Path(model)
    if model.is_dir():
        if is_inside(output, model):
            raise BadInput(f"{what} {output} is inside the model's run directory {model}; write it somewhere else")
    elif any(is_inside(output, p) for p in part_paths(model).values()):
        raise BadInput(f"{what} {output} is a file of the model {model}; write it somewhere else")


def _open(path: Path, role: str, threads: int | None, device: str = "cpu"):
    """One onnxruntime session and its vaekit metadata; clear errors for anything else."""
    # a FIFO or device named .onnx is refused, never opened; a 30 GB file is not read into memory
    check_regular(path, "model file", max_bytes=MAX_BYTES)
    data = path.read_bytes()  # read once: the session and the checksum
    try:
        sess = graph_session(data, role, threads, device)
    except VaekitError:  # ours (--device cuda without onnxruntime-gpu) says what is wrong; the file may be fine
        raise
    except ImportError as e:  # onnxruntime not installed (`vaekit[train]` has none), or broken: not the file's fault
        raise (missing_extra(e) or e) from None
    except Exception as e:  # onnxruntime raises its own zoo of types for unreadable files
        if (kind := kind_of(data[:4096])) is not None:  # a file given in the wrong place: say what it is
            raise OnnxModelError(f"{path} is {kind}, not a model (a run directory or an exported .onnx)") from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OnnxModelError(f"{path} is not a readable ONNX model (not ONNX, truncated or corrupt): {reason}") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get("vaekit.format") != FORMAT:
        found = meta.get("vaekit.format")
        why = f"format {found!r}, this vaekit reads {FORMAT!r}" if found else "no vaekit metadata"
        raise ForeignOnnx(f"{path} is not a vaekit export ({why}); write one with `vaekit export RUN_DIR -o model.onnx`")
    _verify_checksum(path, meta, data)
    found = meta.get("vaekit.role")
    if found != role:
        if found not in _INPUTS:
            raise OnnxModelError(f"{path} has missing or corrupt vaekit metadata 'vaekit.role' ({found!r})")
        part = f".{found}.onnx"  # named as an export names its parts: the main file lies beside it
        hint = (f"; give the main file {path.name[: -len(part)]}.onnx" if role == "scorer" and path.name.endswith(part)
                else "" if role == "scorer" else "; export again to get a matching set")
        raise OnnxModelError(f"{path} is the {found!r} part of a vaekit export, expected the {role}{hint}")
    names_in = {i.name for i in sess.get_inputs()}
    names_out = {o.name for o in sess.get_outputs()}
    if not set(_INPUTS[role]) <= names_in or not set(_OUTPUTS[role]) <= names_out:
        raise OnnxModelError(f"{path} does not have the {role} graph's inputs/outputs "
                             f"(has {sorted(names_in)} -> {sorted(names_out)})")
    return sess, meta


def _verify_checksum(path: Path, meta: dict, data: bytes) -> None:
    import hashlib

    stored = meta.get(CHECKSUM_KEY, "")
    if len(stored) != 64 or data.count(stored.encode()) != 1:
        raise OnnxModelError(f"{path} has no valid vaekit checksum; re-export it with `vaekit export`")
    if hashlib.sha256(data.replace(stored.encode(), CHECKSUM_PLACEHOLDER.encode())).hexdigest() != stored:
        raise OnnxModelError(f"{path} was damaged or modified after export (checksum mismatch)")


def _json(meta: dict, key: str, path: Path):
    try:
        return loads_json(meta[key])
    except (KeyError, ValueError):  # JSONDecodeError, nested too deeply
        raise OnnxModelError(f"{path} has missing or corrupt vaekit metadata {key!r}") from None


def _reader_fingerprint(meta: dict, path: Path) -> str | None:
    """The fingerprint of the defect reader the export's threshold was set with; None in exports of
    runs without one, and of vaekit before it was stored (then a reader part is not checked)."""
    if "vaekit.reader_fingerprint" not in meta:
        return None
    found = _json(meta, "vaekit.reader_fingerprint", path)
    if found is not None and not isinstance(found, str):
        raise OnnxModelError(f"{path} has corrupt vaekit metadata 'vaekit.reader_fingerprint' ({found!r})")
    return found


class OnnxModel(Model):
    """An exported model on onnxruntime: the CUDA provider where onnxruntime-gpu is installed
    and the device allows, else the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu"):
        self.path = Path(path)
        self.threads, self.device = threads, device
        self.parts = part_paths(self.path)
        self._scorer, self.metadata = _open(self.path, "scorer", threads, device)
        self._sessions = {"scorer": self._scorer}
        meta, p = self.metadata, self.path
        try:
            image_size, channels, latent_dim = int(meta["vaekit.image_size"]), int(meta["vaekit.channels"]), int(meta["vaekit.latent_dim"])
            likelihood, fingerprint = meta["vaekit.likelihood"], meta["vaekit.fingerprint"]
        except (KeyError, ValueError):
            raise OnnxModelError(f"{p} has missing or corrupt vaekit metadata (image size, channels, latent dim)") from None
        from vaekit.config import LIKELIHOODS, MAX_IMAGE_SIZE, MAX_Z_DIMS, from_stored_model

        if not (16 <= image_size <= MAX_IMAGE_SIZE and channels in (1, 3) and 1 <= latent_dim <= MAX_Z_DIMS
                and likelihood in LIKELIHOODS):
            raise OnnxModelError(f"{p} has out-of-range vaekit metadata (image size {image_size}, channels {channels}, "
                                 f"latent dim {latent_dim}, likelihood {likelihood!r})")
        anomaly = _json(meta, "vaekit.anomaly", p)
        log_scale = _json(meta, "vaekit.log_scale", p)
        if log_scale is not None and not (isinstance(log_scale, list) and len(log_scale) == channels and all(
                finite_number(v) for v in log_scale)):
            raise OnnxModelError(f"{p} has corrupt vaekit metadata 'vaekit.log_scale' ({log_scale!r})")
        self.config = {"format": meta["vaekit.format"], "vaekit_version": meta.get("vaekit.version"),
                       "model": _json(meta, "vaekit.model", p), "anomaly": anomaly, "fingerprint": fingerprint,
                       "preprocessing": _json(meta, "vaekit.preprocessing", p),
                       "quantization": meta.get("vaekit.quantization", "none")}
        try:
            stored = from_stored_model(self.config["model"])
        except (ValueError, TypeError) as e:
            raise OnnxModelError(f"{p} has corrupt vaekit metadata 'vaekit.model': {e}") from None
        if (stored.image_size, stored.channels, stored.z_dims, stored.likelihood) != (image_size, channels, latent_dim,
                                                                                       likelihood):
            raise OnnxModelError(f"{p}: vaekit metadata disagree (model {stored.image_size}/{stored.channels}/"
                                 f"{stored.z_dims}/{stored.likelihood}, header {image_size}/{channels}/{latent_dim}/"
                                 f"{likelihood})")
        self.info = ModelInfo(
            image_size=image_size, channels=channels, latent_dim=latent_dim, likelihood=likelihood,
            latent_shape=stored.latent_shape, read_size=stored.reads_at,
            fingerprint=fingerprint, engine="onnxruntime", source=p, log_scale=log_scale,
            **threshold_fields(anomaly, p),
        )
        self.info.reader_fingerprint = _reader_fingerprint(meta, p)
        x_shape = next(i.shape for i in self._scorer.get_inputs() if i.name == "x")
        if list(x_shape[1:]) != [channels, image_size, image_size]:
            raise OnnxModelError(f"{p}: graph input x has shape {x_shape}, but its metadata says "
                                 f"{channels}x{image_size}x{image_size}")
        eps_shape = next(i.shape for i in self._scorer.get_inputs() if i.name == "eps")
        if list(eps_shape[1:]) != [latent_dim]:
            raise OnnxModelError(f"{p}: graph input eps has shape {eps_shape}, but its metadata says latent dim {latent_dim}")

    @property
    def export_digest(self) -> str:
        """The main file's checksum: which export this is (two int8 exports of one run differ)."""
        return str(self.metadata.get(CHECKSUM_KEY, ""))

    def _session(self, role: str):
        """The side files are opened on first use, and must match the main file."""
        if role not in self._sessions:
            path = self.parts[role]
            if not path.is_file():
                need = {"encoder": "encode", "decoder": "decode", "reader": "the defect score"}[role]
                raise NotFound(f"{path.name} is missing: {need} needs it. "
                               f"`vaekit export` writes it next to {self.path.name}; copy the files together")
            sess, meta = _open(path, role, self.threads, self.device)
            if meta.get("vaekit.fingerprint") != self.info.fingerprint:
                raise OnnxModelError(
                    f"{path} belongs to another model (fingerprint {meta.get('vaekit.fingerprint')}, "
                    f"{self.path.name} has {self.info.fingerprint}); export again to get a matching set")
            # an int8 export and an fp32 export of one run share the fingerprint: a part of the one beside the
            # main file of the other was used unnoticed (the reader stays float32 in both, so it may come from either)
            quant = meta.get("vaekit.quantization", "none")
            if role != "reader" and quant != self.config["quantization"]:
                raise OnnxModelError(
                    f"{path} is from another export of this model (quantization {quant!r}, {self.path.name} has "
                    f"{self.config['quantization']!r}); export again to get a matching set")
            if role == "reader" and self.info.reader_fingerprint != _reader_fingerprint(meta, path):
                raise OnnxModelError(
                    f"{path} is not the defect reader {self.path.name} was calibrated with (reader fingerprint "
                    f"{_reader_fingerprint(meta, path)}, expected {self.info.reader_fingerprint}); export again to get "
                    "a matching set")
            self._check_part_graph(sess, role, path)
            self._sessions[role] = sess
        return self._sessions[role]

    def _check_part_graph(self, sess, role: str, path: Path) -> None:
        """A part's graph must take and give this model's shapes, as the main file's must: a part of
        another model under this fingerprint (edited metadata) failed inside onnxruntime (exit 3)."""
        c, s, d = self.info.channels, self.info.image_size, self.info.latent_dim
        want = {"encoder": {"x": [c, s, s], "mu": [d]}, "decoder": {"z": [d], "image": [c, s, s]}, "reader": {"x": [c]}}[role]
        shapes = {v.name: list(v.shape[1:]) for v in (*sess.get_inputs(), *sess.get_outputs())}
        if any(shapes.get(name, [])[: len(w)] != w for name, w in want.items()):
            got = {name: shapes.get(name) for name in want}
            raise OnnxModelError(f"{path} does not fit {self.path.name}: its graph has shapes {got}, expected {want} "
                                 "after the batch; export again to get a matching set")

    @staticmethod
    def _f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    @property
    def has_reader(self) -> bool:
        """A surface model's export carries its defect reader in parts.reader.onnx; without that
        file (only the main one copied) the engine scores the VAE's own atypicality, and says so."""
        return self.info.score == "defect" and self.parts["reader"].is_file()

    def _read(self, x):
        """The defect reader's (image scores, maps) of uint8 images: the very numpy maths the torch
        engine's reader uses (vaekit.reader.score), around the exported network."""
        from vaekit import images as imageio
        from vaekit.reader.score import maps_and_scores, read_tiled

        if getattr(self, "_reader_smooth", None) is None:
            cfg = _json(self._reader_meta(), "vaekit.reader", self.parts["reader"])
            smooth = [cfg.get(k) if isinstance(cfg, dict) else None for k in ("smooth", "map_smooth")]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64 for v in smooth):
                raise OnnxModelError(f"{self.parts['reader']} has corrupt vaekit metadata 'vaekit.reader' ({cfg!r})")
            self._reader_smooth = smooth
        run = lambda v: self._run("reader", ["logits"], {"x": v}, [(len(v), v.shape[-2], v.shape[-1])])[0]  # noqa: E731
        scores, maps = [], []
        for i in range(0, len(x), 16):
            s, m = maps_and_scores(read_tiled(run, imageio.to_float(x[i:i + 16])), *self._reader_smooth)
            scores.append(s)
            maps.append(m)
        return np.concatenate(scores), np.concatenate(maps)

    def _reader_meta(self) -> dict:
        self._session("reader")
        return dict(self._sessions["reader"].get_modelmeta().custom_metadata_map)

    def _run(self, role: str, names: list[str], feeds: dict, shapes: list) -> list[np.ndarray]:
        """One graph's outputs, each of the shape the engine's maths needs (a tuple; an int n: the
        codes of n images): a graph that fails to run, or gives other shapes (a forged file,
        re-sealed), is one line naming the file, never numpy's error from deep inside the scoring."""
        path = self.path if role == "scorer" else self.parts[role]
        sess = self._scorer if role == "scorer" else self._session(role)
        try:
            out = sess.run(names, feeds)
        except Exception as e:  # onnxruntime's own types: a bad allocation, a node that cannot run
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OnnxModelError(f"{path} failed to run: {reason[:300]}") from None
        for name, a, want in zip(names, out, shapes):
            codes = isinstance(want, int)  # codes of `want` images: latent_dim values each, flat or a grid
            if (a.shape[:1] != (want,) or int(np.prod(a.shape[1:])) != self.info.latent_dim) if codes else (
                    a.ndim != len(want) or any(w is not None and n != w for n, w in zip(a.shape, want))):
                expected = f"{want} codes of {self.info.latent_dim} values" if codes else str(want)
                raise OnnxModelError(f"{path} is not a graph of this model: its output {name!r} has shape "
                                     f"{tuple(a.shape)}, expected {expected}")
        return out

    def _encode(self, x):
        mu, logvar = self._run("encoder", ["mu", "logvar"], {"x": self._f32(x)}, [len(x), len(x)])
        return mu, logvar

    def _decode(self, z):
        i = self.info
        return self._run("decoder", ["image"], {"z": self._f32(z)}, [(len(z), i.channels, i.image_size, i.image_size)])[0]

    def _score_core(self, x, eps):
        names = list(_OUTPUTS["scorer"])
        with_x_hat = "x_hat" in {o.name for o in self._scorer.get_outputs()}  # exports of vaekit < 0.3 lack it
        n = len(x)
        shapes = [(n,), (n,), (n, x.shape[-2], x.shape[-1]), n, n, (n, *x.shape[1:])]
        out = self._run("scorer", names + ["x_hat"] * with_x_hat, {"x": self._f32(x), "eps": self._f32(eps)},
                        shapes[:len(names) + with_x_hat])
        recon, kl, pmap, mu, logvar = out[:5]
        # the torch engine sums in float32 and hands back float64; so do we
        return recon.astype(np.float64), kl.astype(np.float64), pmap, mu, logvar, out[5] if with_x_hat else None
