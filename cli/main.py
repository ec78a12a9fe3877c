"""The `vaekit` command: global options, error handling, and the command table.

Commands live one group per file and import vaekit (and so torch) only when they run,
which keeps `vaekit --help` instant. Every failure a user can cause ends as one line on
stderr and a documented exit code (see EXIT CODES below), never a traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from vaekit_cli.output import err_console, shown

EXIT_OK, EXIT_ANOMALOUS, EXIT_BAD_INPUT, EXIT_FAILURE = 0, 1, 2, 3

EPILOG = (
    "Exit codes: 0 ok; 1 anomalies found (anomaly-score --fail-on-anomaly); "
    "2 bad usage or input; 3 training or internal failure; 130 interrupted."
)


# an optional dependency -> the extra that installs it
EXTRAS = {"torch": "train", "sklearn": "metrics", "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "runtime",
          "skimage": "metrics", "matplotlib": "plot", "gradio": "demo", "gradio_client": "demo"}


def exit_code_for(exc: BaseException) -> int:
    # vaekit's own errors carry their code (vaekit/errors.py). Older code still raises plain
    # ValueErrors and OSErrors for a user's mistake (a bad value, a missing or corrupt file);
    # anything else is our failure.
    from vaekit.errors import VaekitError

    if isinstance(exc, VaekitError):
        return exc.exit_code
    if isinstance(exc, (ValueError, OSError, LookupError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


class GuardedGroup(TyperGroup):
    """Turns exceptions from any command into one clear line and an exit code."""

    def list_commands(self, ctx):  # keep the order commands are registered in
        return list(self.commands)

    def invoke(self, ctx: typer.Context):
        # File names need not be UTF-8 on Linux; printing one must not crash under a strict locale.
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own usage errors (exit 2)
            raise
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None
        except ModuleNotFoundError as exc:
            if os.environ.get("VAEKIT_DEBUG"):
                raise
            extra = EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            err_console.print(f"[bold red]error:[/bold red] this command needs {exc.name}, which is not installed: "
                              f"pip install 'vaekit\\[{extra}]'", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as exc:  # noqa: BLE001 - this is the top-level handler
            if os.environ.get("VAEKIT_DEBUG"):
                raise
            code = exit_code_for(exc)
            label = "error" if code == EXIT_BAD_INPUT else "failed"
            message = str(exc) or exc.__class__.__name__
            if isinstance(exc, LookupError):  # a bare KeyError says only 'threshold'
                message = f"missing or unexpected entry {message} (a damaged or hand-edited file?)"
            if code == EXIT_FAILURE and not isinstance(exc, RuntimeError):
                message = f"{exc.__class__.__name__}: {message} (set VAEKIT_DEBUG=1 for a traceback)"
            # escape: a message may hold brackets (paths, "vaekit[demo]") that rich would take as markup
            err_console.print(f"[bold red]{label}:[/bold red] {shown(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=GuardedGroup,
    name="vaekit",
    help="Convolutional VAEs for your own images: train, compress, score anomalies, export to ONNX.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from vaekit import __version__

        typer.echo(f"vaekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    threads: int = typer.Option(0, "--threads", envvar="VAEKIT_THREADS", help="CPU threads for torch/onnxruntime (0: library default)."),
) -> None:
    """Convolutional VAEs for your own images."""
    if threads:
        os.environ["VAEKIT_THREADS"] = str(threads)


def _register() -> None:
    # one module per command group; each imports vaekit lazily inside its commands
    from vaekit_cli import anomaly, codec, demo_cmd, export_cmd, train

    for group in (train, codec, anomaly, export_cmd, demo_cmd):
        group.register(app)


_register()


def main() -> None:
    try:
        app(prog_name="vaekit")
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - errors outside a command (e.g. argument parsing)
        if os.environ.get("VAEKIT_DEBUG"):  # the command re-raised for this: show where it came from
            import traceback

            traceback.print_exc()
        else:
            err_console.print(f"[bold red]error:[/bold red] {shown(exc)}", highlight=False)
        sys.exit(exit_code_for(exc))


if __name__ == "__main__":
    main()
