"""`vaekit demo`: the local web app (Gradio) on a run directory or an exported .onnx model."""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli import output
from vaekit_cli.output import apply_threads, err_console, shown

DEFAULT_RUN = Path("runs/latest")  # where `vaekit train` writes when given no --out
FILE_SIZE = re.compile(r"\s*0*([1-9][0-9]*)\s*(b|kb|mb|gb|tb)\s*", re.IGNORECASE)  # Gradio's max_file_size, above 0
MAX_FILE_SIZE_TB = 1000  # a larger limit is none; 2**64 bytes and more failed in Gradio (exit 3)


def demo(
    model: Annotated[Optional[Path], typer.Argument(
        help="A run directory (all tabs) or an exported .onnx file (all but Train). "
             "Default: runs/latest if it exists, else start with no model and train one in the app.",
        exists=True)] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.", min=1, max=65535)] = 7860,
    host: Annotated[str, typer.Option(help="Address to bind; the default keeps the app on this machine. "
                                           "0.0.0.0 exposes it to your network.")] = "127.0.0.1",
    share: Annotated[bool, typer.Option("--share", help="Also open a public gradio.live link (off by default).")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where the Train tab writes new runs.", file_okay=False)] = Path("runs"),
    max_file_size: Annotated[str, typer.Option(help="Largest accepted upload, e.g. 25mb.")] = "25mb",
    data_root: Annotated[Optional[Path], typer.Option(help="Folders typed into the page (Train, Latent space, Open) "
                                                           "must lie inside this one. Default: the current folder.",
                                                      exists=True, file_okay=False)] = None,
    allow_server_folders: Annotated[bool, typer.Option("--allow-server-folders", help="Allow typed-in folders even "
                                                       "when --host exposes the app beyond this machine.")] = False,
    auth: Annotated[Optional[str], typer.Option(help="Require this user name and password: USER:PASSWORD.")] = None,
) -> None:
    """Open the web app on http://127.0.0.1:PORT (train, compress, anomaly, generate, latent space)."""
    try:
        from vaekit_demo.app import build_app, check_address, launch
    except ImportError as e:  # gradio (or what it brings) is not installed: the extra's message, exit 2
        from vaekit.errors import MissingExtra

        missing = getattr(e, "name", None) or "gradio"
        raise MissingExtra(f"vaekit demo needs {missing}, which is not installed: pip install 'vaekit[demo]'") from None

    from vaekit_demo.security import is_loopback

    credentials = _checked(host, max_file_size, auth)
    apply_threads()
    if model is None and (DEFAULT_RUN / "config.json").is_file():
        model = DEFAULT_RUN
    if share:
        err_console.print("[yellow]--share: the app will be reachable by anyone with the link[/yellow]")
    if host != "127.0.0.1":
        err_console.print(f"[yellow]--host {shown(host)}: the app will be reachable from other machines[/yellow]")
    server_folders = allow_server_folders or (is_loopback(host) and not share)
    if not server_folders:
        err_console.print("[yellow]folders typed into the page are switched off (--allow-server-folders to allow "
                          "them)[/yellow]")
    app = build_app(model, runs_dir=runs_dir, data_root=data_root or Path.cwd(), server_folders=server_folders)
    if not share:  # Gradio's own lines end with a hint to call launch(share=True), which no CLI user can
        check_address(host, port)
        output.console.print(f"vaekit demo on http://{'[' + host + ']' if ':' in host else host}:{port} "
                             "(Ctrl-C to stop)", highlight=False)
    with _ctrl_c_noted() as ctrl_c:
        launch(app, port=port, share=share, max_file_size=max_file_size, host=host, auth=credentials, quiet=not share)
    if output.terminated or ctrl_c:  # Gradio takes the interrupt itself, closes its server and returns
        raise typer.Exit(output.EXIT_TERMINATED) if output.terminated else KeyboardInterrupt()  # 130, as every command


def _checked(host: str, max_file_size: str, auth: str | None) -> tuple[str, str] | None:
    """The options Gradio would take badly, checked before anything is served; the credentials."""
    if not host.strip():
        raise typer.BadParameter("expected an address such as 127.0.0.1 or 0.0.0.0, got ''", param_hint="--host")
    if ":" in host:  # Gradio builds its own URL from the host unbracketed: an IPv6 literal was a traceback
        raise typer.BadParameter(f"{shown(host)} is not an address the web app's server (Gradio) can serve on (an "
                                 "IPv6 address, or HOST:PORT: give the port with --port); use 127.0.0.1, 0.0.0.0 or a "
                                 "host name", param_hint="--host")
    size = FILE_SIZE.fullmatch(max_file_size)  # Gradio's own parse failed with a traceback (exit 3)
    units = {"b": 0, "kb": 1, "mb": 2, "gb": 3, "tb": 4}
    if not size or int(size[1]) * 1000 ** units[size[2].lower()] > MAX_FILE_SIZE_TB * 1000**4:
        raise typer.BadParameter(f"expected a size above 0 and at most {MAX_FILE_SIZE_TB}tb with a unit b, kb, mb, "
                                 f"gb or tb, such as 25mb, got {shown(max_file_size)}", param_hint="--max-file-size")
    credentials = None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise typer.BadParameter("expected USER:PASSWORD", param_hint="--auth")
        credentials = (user, password)
    return credentials


@contextmanager
def _ctrl_c_noted():
    """A list that a SIGINT arriving in the block is appended to, the KeyboardInterrupt raised as
    ever: Gradio's server loop catches it, closes the server and returns, and `vaekit demo`
    stopped by Ctrl-C exited 0, as if it had finished."""
    seen: list[int] = []
    # signals reach the main thread only; a SIGINT ignored (`nohup vaekit demo &`) stays ignored
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen
        return

    def note(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
