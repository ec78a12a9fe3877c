"""The `vaekit` command: global options, error handling, and the command table.

Commands live one group per file and import vaekit (and so torch) only when they run,
which keeps `vaekit --help` instant. Every failure a user can cause ends as one line on
stderr and a documented exit code (see EXIT CODES below), never a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import threading

# A Ctrl-C while the CLI imports its libraries (the first ~0.3 s) printed a traceback from deep in
# them, exit 1: until the imports are done it ends the process at once, exit 130 (restored below).
_QUIET_START = (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler)  # not where it is ignored
if _QUIET_START:
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))


def _restore_ctrl_c() -> None:
    """A Ctrl-C is a KeyboardInterrupt again (the commands turn it into 130), also where an import
    failed and the importer goes on."""
    if _QUIET_START:
        signal.signal(signal.SIGINT, signal.default_int_handler)


try:
    import inspect
    import re
    import sys

    import typer
    from rich.markup import escape
    from typer.core import TyperGroup

    from vaekit_cli import output
    from vaekit_cli.output import EXIT_BROKEN_PIPE, EXIT_TERMINATED, Terminated, err_console, shown
except BaseException:
    _restore_ctrl_c()
    raise

EXIT_OK, EXIT_ANOMALOUS, EXIT_BAD_INPUT, EXIT_FAILURE = 0, 1, 2, 3
EPILOG = (
    "Exit codes: 0 ok; 1 anomalies found (anomaly-score --fail-on-anomaly); "
    "2 bad usage or input; 3 training or internal failure; 130 interrupted (Ctrl-C); 141 output pipe closed; 143 terminated (SIGTERM)."
)


BUG = "this is a bug in vaekit, not a problem with your input: please report it with the traceback above"


def debug() -> bool:
    """VAEKIT_DEBUG=1 (or true/yes/on) shows tracebacks; unset, empty, 0, false, no or off do not."""
    return os.environ.get("VAEKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


_PATH_REPR = r"(?:Posix|Windows|PurePosix|PureWindows)?Path\((?P<q>['\"])(?P<p>.*?)(?P=q)\)"
_PATH_LIST = re.compile(r"\[\s*(" + _PATH_REPR.replace("?P<q>", "?:").replace("(?P=q)", "['\"]").replace("?P<p>", "?:")
                        + r"(?:\s*,\s*" + _PATH_REPR.replace("?P<q>", "?:").replace("(?P=q)", "['\"]").replace("?P<p>", "?:")
                        + r")*)\s*\]")


def plain_paths(text: str) -> str:
    """A message as users read it: `[PosixPath('a.png'), PosixPath('b')]` becomes `a.png, b`
    (a list of paths formatted by repr somewhere below is still one readable line)."""
    text = _PATH_LIST.sub(lambda m: m.group(1), text)
    return re.sub(_PATH_REPR, lambda m: m.group("p"), text)


def exit_code_for(exc: BaseException) -> int:
    # vaekit's own errors carry their code (vaekit/errors.py). A plain FileNotFoundError or
    # FileExistsError still means a path the user named, until every module raises vaekit's own
    # types for them; anything else is our failure.
    from vaekit.errors import VaekitError

    if isinstance(exc, VaekitError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, FileExistsError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE  # a bug


def _journal_left(args: list[str]) -> bool:
    """Whether the command's output (`-o`/`--out` among `args`) has a journal beside it to resume."""
    import glob

    from vaekit.stream.names import PARTIAL_SUFFIX, partial_path

    outs = [v.split("=", 1)[1] for v in args if v.startswith("--out=")]
    outs += [args[i + 1] for i, v in enumerate(args[:-1]) if v in ("-o", "--out")]
    for out in outs:
        try:
            journal = partial_path(out)
            shares = glob.escape(journal.name[: -len(PARTIAL_SUFFIX)]) + ".shard-*" + PARTIAL_SUFFIX
            if journal.exists() or any(journal.parent.glob(shares)):
                return True
        except (OSError, ValueError):
            continue
    return False


class GuardedGroup(TyperGroup):
    """Turns exceptions from any command into one clear line and an exit code."""

    def list_commands(self, ctx):  # keep the order commands are registered in
        return list(self.commands)

    def _resume_hint(self, ctx: typer.Context) -> str:
        """How to go on after Ctrl-C, for a job that keeps its finished batches (OUT.partial);
        `train` says its own."""
        name = ctx.invoked_subcommand
        cmd = self.commands.get(name) if name and name != "train" else None
        if cmd is None or not any(p.name == "resume" for p in cmd.params) or not _journal_left(getattr(self, "_args", [])):
            return ""  # rows to stdout, or the job ended before a journal (or after its output was written)
        return ": the batches it finished, if any, are kept; run the same command with --resume to go on from them"

    def invoke(self, ctx: typer.Context):
        # File names need not be UTF-8 on Linux; printing one must not crash under a strict locale.
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
        try:
            _refuse_empty(ctx.args)
            self._args = [*getattr(ctx, "protected_args", []), *ctx.args]  # the command's, which invoke consumes
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own usage errors (exit 2)
            raise
        except BrokenPipeError:  # `vaekit ... --help | head`: the reader left; end quietly, 128 + SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt as exc:
            what, code = ("terminated", EXIT_TERMINATED) if isinstance(exc, Terminated) else ("interrupted", 130)
            err_console.print(f"[red]{what}[/red]{self._resume_hint(ctx)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        except Exception as exc:  # noqa: BLE001 - this is the top-level handler
            if debug():
                raise
            from vaekit.errors import as_user_sees_it, is_user_error

            exc = as_user_sees_it(exc)
            if not is_user_error(exc):  # a bug: keep its traceback, and say so
                import traceback

                traceback.print_exception(exc)
                err_console.print(f"[bold red]failed:[/bold red] {shown(BUG)}", highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_FAILURE) from None
            code = exit_code_for(exc)
            label = "error" if code == EXIT_BAD_INPUT else "failed"
            # escape: a message may hold brackets (paths, "vaekit[demo]") that rich would take as markup
            err_console.print(f"[bold red]{label}:[/bold red] {shown(plain_paths(str(exc)) or exc.__class__.__name__)}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None


def _refuse_empty(args: list[str]) -> None:
    """An empty argument ("" or --option=) as BadInput: a path is read as the current folder, so
    `vaekit decode RUN F.vkc -o "$OUT"` with OUT unset would write into it, and `vaekit train ""`
    would train on it. No option of vaekit's takes an empty value."""
    after_dashes = False
    for i, a in enumerate(args):
        if a == "--" and not after_dashes:
            after_dashes = True
        elif a == "" or (not after_dashes and a.startswith("--") and a.endswith("=")):
            from vaekit.errors import BadInput

            where = f"{a[:-1]} is given an empty value" if a else \
                f"{args[i - 1]} is given an empty value" if i and args[i - 1].startswith("-") and not after_dashes \
                else "an argument is empty"
            raise BadInput(f"{where}: name the path or value (a shell variable left unset?)")


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
    threads: int = typer.Option(0, "--threads", envvar="VAEKIT_THREADS", min=0, max=1024,
                                help="CPU threads for torch/onnxruntime (0: library default; at most 1024)."),
) -> None:
    """Convolutional VAEs for your own images."""
    output.terminated = False  # this command's own (a process may run several: tests, the API)
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, output.on_sigterm)
    output.set_threads(threads)
    output.sleeping_waits()  # before any command imports torch


def _register() -> None:
    # one module per command group; each imports vaekit lazily inside its commands
    from vaekit_cli import anomaly, codec, demo_cmd, export_cmd, generate, train

    for group in (train, codec, generate, anomaly, export_cmd, demo_cmd):
        group.register(app)
    for info in [*app.registered_commands, *train.sample_data.registered_commands]:
        info.help = info.help or _reflowed(inspect.getdoc(info.callback) or "")


def _reflowed(doc: str) -> str:
    """A command's docstring as --help shows it: each paragraph one line, for rich to wrap to the
    terminal (it kept the source's line breaks, so every line ended in a stray one-word line), and
    brackets escaped (rich took `pip install "vaekit[runtime]"` as markup and printed "vaekit")."""
    return escape("\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in doc.split("\n\n")))


try:
    _register()
finally:  # imported (or failed to): a Ctrl-C is a KeyboardInterrupt again
    _restore_ctrl_c()


def main() -> None:
    try:
        code = app(prog_name="vaekit", standalone_mode=False)
    except SystemExit:
        _quiet_exit()
        raise
    except KeyboardInterrupt:  # before or after a command ran (GuardedGroup says the rest)
        err_console.print("[red]interrupted[/red]", highlight=False)
        sys.exit(130)
    except typer.TyperException as exc:  # Typer's (vendored click's) usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vaekit` alone: the help, as before
            exc.show()
        else:  # one line, not Typer's box of five
            err_console.print(f"[bold red]error:[/bold red] {shown(usage_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except typer.Abort:  # Ctrl-C at a prompt, before any command ran
        err_console.print("[red]interrupted[/red]", highlight=False)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - errors outside a command (e.g. argument parsing)
        if debug():  # the command re-raised for this: show where it came from
            import traceback

            traceback.print_exc()
        else:
            err_console.print(f"[bold red]error:[/bold red] {shown(plain_paths(str(exc)))}", highlight=False)
        sys.exit(exit_code_for(exc))
    _quiet_exit()
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _quiet_exit() -> None:
    """The command is done: a Ctrl-C while the interpreter shuts down (torch's exit handlers) is
    ignored, where it printed their traceback after a complete, successful job."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_VALIDATION_WORDS = (
    (r"\bValue error, ", ""),
    (r"Input should be a valid number, unable to parse string as a number", "not a number"),
    (r"Input should be a valid integer, unable to parse string as an integer", "not a whole number"),
    (r"Input should be a valid integer, got a number with a fractional part", "not a whole number"),
    (r"Input should be greater than or equal to ", "it must be at least "),
    (r"Input should be less than or equal to ", "it must be at most "),
    (r"Input should be greater than ", "it must be above "),
    (r"Input should be less than ", "it must be below "),
)


def usage_line(exc) -> str:
    """A usage error as one line, with where to read the usage: "Invalid value for '--quality':
    0 is not in the range 1<=x<=8 (see `vaekit encode --help`)"."""
    text = " ".join(str(exc.format_message()).split()).rstrip(".")
    for pattern, plain in _VALIDATION_WORDS:  # the validation library's own phrasing, said plainly
        text = re.sub(pattern, plain, text)
    ctx = getattr(exc, "ctx", None)
    return f"{text} (see `{ctx.command_path} --help`)" if ctx is not None else text


if __name__ == "__main__":
    main()
