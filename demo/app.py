"""The vaekit web app: `build_app(model)` lays out the tabs and wires each button to a handler.

Every handler lives in `handlers.py` as a plain function; `tabs.py` holds each tab's widgets
and wiring, which only turn widgets into arguments, results into widgets, and user mistakes
into messages in the page (gr.Error); this file builds the page from them and serves it.
The app serves on 127.0.0.1 with a cap on upload size; it serves only the files it writes
(code files, CSVs, images) and never a file from a folder a user types in. Requests for
other host names and from other sites are refused, folders typed in stay inside the data
root, and messages never show server paths (security.py).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import gradio as gr

import vaekit
from vaekit.inference.engine import Model
from vaekit_demo.security import guarded_gradio
from vaekit_demo.context import Context
from vaekit_demo.tabs import TABS, header, wire_open

MAX_UPLOAD = "25mb"  # per uploaded file
# The models work on small images; show their pixels as squares instead of a blur.
CSS = ".vk-pixels img, .vk-pixels canvas { image-rendering: pixelated; }"


class _State:
    """What the app shares across browser tabs: its folders, and the model a page opened now starts
    with (the one opened or trained last). Each page's own model and Stop are its session's (sessions.py)."""

    def __init__(self, model: Model | None, runs_dir: Path, workdir: Path, data_root: Path, server_folders: bool):
        self.model, self.runs_dir, self.workdir = model, runs_dir, workdir
        self.data_root, self.server_folders = data_root, server_folders


def build_app(
    model: str | Path | Model | None = None,
    runs_dir: str | Path = "runs",
    workdir: str | Path | None = None,
    data_root: str | Path | None = None,
    server_folders: bool = True,
) -> gr.Blocks:
    """The whole app: a model (run directory, .onnx file, or loaded Model; None: train one first).

    New runs from the Train tab go under `runs_dir`; files the app hands out (code files,
    CSVs) are written under `workdir` (a fresh temporary folder by default). Folders typed
    into the page (Train, Latent space, Open) must lie inside `data_root` (default: the
    current folder; Open also takes `runs_dir`); server_folders=False switches them off.
    """
    if isinstance(model, (str, Path)):
        model = vaekit.load(model)
    if workdir is None:  # ours, so ours to remove: gradio keeps its own copy of what it served
        workdir = tempfile.mkdtemp(prefix="vaekit-demo-")
        atexit.register(shutil.rmtree, workdir, True)
    st = _State(model, Path(runs_dir), Path(workdir), Path(data_root or Path.cwd()).resolve(), server_folders)
    ctx = Context(st)
    with gr.Blocks(title="vaekit", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        w = header(ctx)
        for title, tab_id, layout, _ in TABS:
            with gr.Tab(title, id=tab_id):
                vars(w).update(vars(layout(ctx)))
        ctx.model_widgets = [w.model_md, w.threshold, w.hist, w.lat_folder]
        # the widgets above were drawn for the model open at build time: a page opened after Open or
        # Train showed "No model open" and a threshold slider for the old model (its range enforced)
        app.load(ctx.model_outputs, None, ctx.model_widgets, api_name="model", show_progress="hidden")
        wire_open(w, ctx)
        for *_, wire in TABS:
            wire(w, ctx)

        def end_session(request: gr.Request):  # the page was closed or reloaded
            ctx.sessions.end(request)

        app.unload(end_session)
    return app


def check_address(host: str, port: int) -> None:
    """BadInput unless this process can listen on host:port now. Gradio tries only the port on
    127.0.0.1 and reports any failure, an unknown host too, as "Cannot find empty port" (exit 3)."""
    from vaekit.errors import BadInput

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadInput(f"invalid port {port!r}: expected a whole number from 1 to 65535")
    # the socket uvicorn binds: IPv6 for an address with a colon, else IPv4 ("localhost" too)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closing socket is no obstacle
        try:
            s.bind((host, port))
        except (socket.gaierror, UnicodeError) as e:
            raise BadInput(f"cannot serve on host {host!r}: {getattr(e, 'strerror', None) or e}") from None
        except OSError as e:
            raise BadInput(f"cannot serve on {host}:{port}: {e.strerror or e} (pick another --port or --host)") from None


def _cache_cleanup_skips_folders() -> None:
    """Gradio's cache cleanup (delete_cache, and at shutdown) calls os.remove on every path a request
    named inside its upload folder, and a request can name that folder itself as an uploaded file:
    IsADirectoryError then ended the hourly cleanup for good (the cache grew until the app exited)
    and failed the shutdown. Folders leave the list first; files are deleted as Gradio does."""
    from gradio import route_utils

    original = route_utils.delete_files_created_by_app
    if getattr(original, "skips_folders", False):
        return

    def cleanup(blocks, age):
        for files in blocks.temp_file_sets:
            files -= {f for f in list(files) if os.path.isdir(f)}
        return original(blocks, age)

    cleanup.skips_folders = True
    route_utils.delete_files_created_by_app = cleanup  # looked up by name on each run


def launch(app: gr.Blocks, port: int = 7860, share: bool = False, max_file_size: str | int = MAX_UPLOAD,
           prevent_thread_lock: bool = False, quiet: bool = False, host: str = "127.0.0.1",
           auth: tuple[str, str] | None = None):
    """Serve on 127.0.0.1 unless another host is given (a share link only when asked), with uploads
    capped at `max_file_size`, answering only requests for the bound address (security.HostGuard),
    and behind a user name and password when `auth` is given."""
    check_address(host, port)
    _cache_cleanup_skips_folders()
    # a --share link comes in through Gradio's relay under its own host name: no guard there
    with guarded_gradio(host) if not share else contextlib.nullcontext():
        return app.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                          prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, css=CSS,
                          show_error=False, allowed_paths=None, auth=auth)
