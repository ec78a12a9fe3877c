"""How the web app reports errors: a user's mistake (vaekit's own errors) as a message in the page,
without server paths and as text (the toast renders HTML); a missing extra as the pip command; anything else as a bug, its traceback
in the server's log and a request to report it in the page."""

from __future__ import annotations

import functools
import inspect
import traceback
from pathlib import Path

import gradio as gr

from vaekit.errors import BadInput, as_user_sees_it, is_user_error
from vaekit.images import LinkOutside
from vaekit_demo.security import html_text, public_message

BUG = ("internal error: this is a bug in vaekit, not a problem with your input; please report it "
       "with the traceback printed in the server's log")


def guard_errors(fn, roots: tuple[Path, ...] = ()):
    """Turn vaekit's exceptions for bad input into gr.Error, so the page shows the message
    (without server paths: those under `roots` relative, any other cut to its last part).
    Anything else is a bug: its traceback goes to the server's log, the page asks to report it."""

    def error(e: BaseException) -> gr.Error:
        e = as_user_sees_it(e)  # a missing extra as its pip command, a name too long as the name
        if isinstance(e, LinkOutside):  # the app confines scans to --data-root only: said as the page knows it
            e = BadInput(f"{e.link} is a symbolic link to outside the app's data folder (--data-root), which the app "
                         "does not read: remove the link, or copy its files into the data folder")
        elif not is_user_error(e):
            traceback.print_exception(e)
            return gr.Error(BUG, print_exception=False)
        return gr.Error(html_text(public_message(str(e) or type(e).__name__, list(roots))), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - classified in `error`
                raise error(e) from None

        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - classified in `error`
            raise error(e) from None

    return plain
