"""`vaekit demo`: the local web app (Gradio) on a run directory or an exported .onnx model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli.output import apply_threads, err_console, shown

DEFAULT_RUN = Path("runs/latest")  # where `vaekit train` writes when given no --out


def demo(
    model: Annotated[Optional[Path], typer.Argument(
        help="A run directory (all tabs) or an exported .onnx file (all but Train). "
             "Default: runs/latest if it exists, else start with no model and train one in the app.",
        exists=True)] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to bind; the default keeps the app on this machine. "
                                           "0.0.0.0 exposes it to your network.")] = "127.0.0.1",
    share: Annotated[bool, typer.Option("--share", help="Also open a public gradio.live link (off by default).")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where the Train tab writes new runs.")] = Path("runs"),
    max_file_size: Annotated[str, typer.Option(help="Largest accepted upload, e.g. 25mb.")] = "25mb",
) -> None:
    """Open the web app on http://127.0.0.1:PORT (train, compress, anomaly, generate, latent space)."""
    try:
        from vaekit_demo.app import build_app, launch
    except ImportError as e:
        raise RuntimeError(f"the demo needs gradio ({e}); install it with: pip install 'vaekit[demo]'") from None

    apply_threads()
    if model is None and (DEFAULT_RUN / "config.json").is_file():
        model = DEFAULT_RUN
    if share:
        err_console.print("[yellow]--share: the app will be reachable by anyone with the link[/yellow]")
    if host != "127.0.0.1":
        err_console.print(f"[yellow]--host {shown(host)}: the app will be reachable from other machines[/yellow]")
    launch(build_app(model, runs_dir=runs_dir), port=port, share=share, max_file_size=max_file_size, host=host)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
