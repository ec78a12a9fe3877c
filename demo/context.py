"""What every tab of the web app shares: the app's state, each page's session (sessions.py), the
folders the page may name, the widgets that show a session's model, and the warning for uploads
that could not be read."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import gradio as gr

from vaekit.inference.engine import Model
from vaekit_demo import figures, handlers
from vaekit_demo.errors import guard_errors
from vaekit_demo.security import html_text, md_code, public_path
from vaekit_demo.sessions import Session, Sessions

# Trainings the app runs at once, all sessions together (a REST call is a session of its own): each holds
# its images and model in memory, and 8 at once at 128 px, latent 256, peaked at 4.0 GB (2026-12-05)
MAX_TRAININGS = 4


def data_folder(model: Model | None, data_root: Path) -> str:
    """The folder a run was trained on (the latent-space tab's default), relative to the data
    root; empty when the model does not know it or it lies outside (the page shows no server paths)."""
    folder = str(getattr(model, "config", {}).get("data", {}).get("root", "")) if model else ""
    try:
        return Path(folder).resolve().relative_to(data_root.resolve()).as_posix() if folder else ""
    except (ValueError, OSError):
        return ""


class Context:
    """What every tab's handlers share: the app's state (vaekit_demo.app), the sessions, the folders
    the page may name, and the widgets that show a session's model."""

    def __init__(self, st):
        self.st = st
        self.roots = (st.data_root, st.runs_dir, st.workdir)
        self.model_widgets: list = []
        self.sessions = Sessions(st)
        self._run_dirs: set[Path] = set()  # given to a Train press by this app
        self._run_dirs_lock = threading.Lock()
        self.max_trainings = MAX_TRAININGS
        self.trainings = threading.BoundedSemaphore(MAX_TRAININGS)  # a slot per running training's worker

    def session(self, request) -> Session:  # the session of a handler's `request: gr.Request`
        return self.sessions.get(request)

    @contextlib.contextmanager
    def outputs(self, request, button: str):
        """A fresh folder for one button's files in the request's session (its last ones deleted), which
        other sessions' trimming and the page closing leave alone until the block ends: hand Gradio its
        copies (`served`) inside it."""
        s = self.session(request)
        with self.sessions.using(s):
            self.sessions.trim(s)
            yield s.outputs(button)

    @staticmethod
    def served(component, path) -> str:
        """Gradio's own copy of a file a handler wrote (for `component` to show), made now: Gradio made it
        only after the handler returned, when trimming could already have deleted the file."""
        return component.move_resource_to_block_cache(str(path))

    def guard(self, fn):
        return guard_errors(fn, self.roots)

    def public(self, path) -> str:  # a server path as the page shows it (security.public_path)
        return public_path(path, list(self.roots))

    def new_run_dir(self, folder) -> Path:
        """Where a Train press writes: runs_dir/FOLDER-TIMESTAMP, with -2, -3 ... when taken (tabs train
        side by side: two presses in one second got one folder, and the second "is in use"). FOLDER is cut
        to 200 bytes: a folder name near the file system's 255 failed with "File name too long", shown as a bug."""
        name = Path(folder or "run").name.encode()[:200].decode(errors="ignore")  # whole characters only
        base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        with self._run_dirs_lock:
            out, n = self.st.runs_dir / base, 2
            while out in self._run_dirs or out.exists():
                out, n = self.st.runs_dir / f"{base}-{n}", n + 1
            self._run_dirs.add(out)
        return out

    def model_outputs(self, request: gr.Request = None) -> tuple:
        """The model widgets for the request's session (a page loading: the model opened last)."""
        s = self.session(request)
        s.page = True  # a page (or a script that loads as one): kept over bare REST calls' sessions
        model = s.model
        rng = figures.threshold_range(model)
        return (handlers.describe(model, self.roots), gr.Slider(**rng),
                figures.model_histogram(model, rng["value"]), data_folder(model, self.st.data_root))


# The events that decode uploads or a folder take turns, across tabs and sessions: each alone had
# Gradio's limit of one at a time, so ten sessions' 9000 px uploads to five tabs decoded five
# images at once (3.3 GB). One at a time in all keeps the app's memory that of one request.
DECODING = {"concurrency_id": "decoding", "concurrency_limit": 1}
SHOWN_SKIPPED = 5  # unreadable uploads named in a summary; the rest counted


def skipped_note(skipped, what: str) -> str:
    """A Markdown paragraph for a summary, counting the uploads that could not be read and naming
    the first few with why ("" when none): a toast goes away, and a script never sees it."""
    if not skipped:
        return ""
    named = "; ".join(f"{md_code(p.name)} ({md_code(why)})" for p, why in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"\n\n**{len(skipped)} upload{'' if len(skipped) == 1 else 's'} unreadable**, not {what}: {named}{more}"


def warn_skipped(skipped) -> None:
    """A toast naming the first few uploads that could not be read (the rest of the request went on)."""
    if skipped:
        shown = "; ".join(f"{p.name}: {r}" for p, r in skipped[:3])
        gr.Warning(html_text(f"skipped {len(skipped)} unreadable file(s): {shown}"))
