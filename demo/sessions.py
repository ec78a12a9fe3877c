"""Each browser tab's own part of the web app: its open model, its Stop button, its files.

Gradio gives every page load a session (`gr.Request.session_hash`; a gradio_client Client keeps
one too). Open and Train change the model of the session that asked and the model pages opened
later start with, never the model of a page already open; Stop stops only its own session's
training. A session writes its files (code files, CSVs, .vkc files) in its own folder of the work
folder, one folder per button: pressing it again replaces the last result's files. A handler hands
Gradio its own copy of each file before it returns (Context.served), so a download link on the page
keeps working when the file it was made from is gone. A session's folder goes when its page is
closed, and the least recently used sessions' folders go once more than MAX_FOLDERS sessions have
files or the work folder holds more than MAX_BYTES (a script's sessions never close); never while a
request of that session is writing them (Sessions.using).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from vaekit.errors import BadInput
from vaekit.inference.engine import Model

# Sessions remembered at once, as many as Gradio keeps state for (a REST call is a session of its own,
# so a few thousand calls would otherwise forget an open page's model); least recently used first.
MAX_SESSIONS = 10_000
MAX_FOLDERS = 64  # sessions whose files are kept; an older session's go (its page's links still work)
MAX_BYTES = 256 << 20  # of the work folder: the least recently used other sessions' files go first


@dataclass
class Session:
    """One page's (or one gradio_client Client's) part of the app."""

    folder: Path  # its files, under the app's work folder
    model: Model | None
    stop: threading.Event = field(default_factory=threading.Event)  # its Stop button
    training: threading.Lock = field(default_factory=threading.Lock)  # held while its training runs
    has_files: bool = False
    ended: bool = False  # its last training ended (done, stopped or failed), and the page says how
    busy: int = 0  # its requests writing files now (Sessions.using): trimming and closing leave its folder alone
    closed: bool = False  # its page was closed: the last request still writing deletes its folder
    page: bool = False  # it loaded the page's model widgets (a page, a gradio_client script), not a bare REST call

    def outputs(self, button: str) -> Path:
        """An empty folder for one button's results: the last press's files are deleted first (a
        button's event runs one request at a time, and Gradio copied them into its cache)."""
        out = self.folder / button
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self.has_files = True
        return out

    def begin_training(self) -> None:
        if not self.training.acquire(blocking=False):
            raise BadInput("a training run is already going on this page: press Stop, or wait until it is done")
        # A flag of this run's own, not the last one's cleared: a Stop pressed before this run began is
        # not meant for it, and a run whose page let go of it (a cancelled request: the lock is free
        # before its worker sees the flag) must stay stopped, not train on unseen beside this one.
        self.stop = threading.Event()
        self.ended = False


def _folder_name(session_hash: str) -> str:
    # the hash comes from the request, so a client chooses it: never a path of its own
    return hashlib.sha256(session_hash.encode("utf-8", "replace")).hexdigest()[:24]


class Sessions:
    """The sessions of one app, each with its own model (starting at the app's, `st.model`)."""

    def __init__(self, st):
        self.st = st
        self._lock = threading.Lock()
        self._known: OrderedDict[str, Session] = OrderedDict()
        self._made = itertools.count()  # a folder per Session, not per hash: an ended one's last request
        # deletes its folder when done, and a request of that hash meanwhile starts a new Session
        self._local = Session(st.workdir / "local", st.model)  # calls with no request: tests, scripts

    def get(self, request) -> Session:
        """The session of a request; a call with no request (a test, a script) shares the app's model."""
        key = getattr(request, "session_hash", None)
        if not key:
            self._local.model = self.st.model
            return self._local
        with self._lock:
            s = self._known.get(key)
            if s is None:
                folder = self.st.workdir / f"{_folder_name(key)}-{next(self._made)}"
                s = self._known[key] = Session(folder, self.st.model)
            self._known.move_to_end(key)
            forgotten = self._overflow()
        for old in forgotten:
            self._forget(old)
        return s

    def set_model(self, s: Session, model: Model | None) -> None:
        """Open or Train in session `s`: its model, and the one pages opened from now on start with."""
        s.model = self.st.model = model

    def end(self, request) -> None:
        """The page was closed or reloaded: stop its training (the run keeps its checkpoint), drop its files."""
        key = getattr(request, "session_hash", None)
        with self._lock:
            s = self._known.pop(key, None) if key else None
        if s is not None:
            self._forget(s)

    @contextlib.contextmanager
    def using(self, s: Session):
        """While a request of `s` writes its files and hands them to Gradio: another session's request
        (trimming) or the page closing deleted them under it, and the download link led nowhere."""
        with self._lock:
            s.busy += 1
        try:
            yield
        finally:
            with self._lock:
                s.busy -= 1
                gone = s.closed and not s.busy
            if gone:  # the page closed meanwhile: what this request wrote went on the disk for good
                shutil.rmtree(s.folder, ignore_errors=True)

    def _overflow(self) -> list[Session]:
        """Sessions beyond MAX_SESSIONS that are not training nor writing (under the lock): bare REST calls'
        first, then pages', each least recently used first. A script's thousands of REST calls (a session
        each) forgot an open page's session: the page showed the model it opened and used another."""
        extra = len(self._known) - MAX_SESSIONS
        if extra <= 0:
            return []
        idle = [(s.page, k) for k, s in self._known.items() if not s.training.locked() and not s.busy]
        return [self._known.pop(k) for _, k in sorted(idle, key=lambda pk: pk[0])[:extra]]

    def _forget(self, s: Session) -> None:
        with self._lock:
            s.closed = True
            busy = s.busy
        s.stop.set()
        if not busy:  # else the last request writing deletes it (using)
            shutil.rmtree(s.folder, ignore_errors=True)

    def trim(self, current: Session) -> None:
        """Keep the files of the MAX_FOLDERS most recently used sessions only, and the work folder
        under MAX_BYTES: other sessions' files go, least recently used first."""
        with self._lock:  # _known runs from the least recently used
            others = [s for s in self._known.values() if s is not current and s.has_files]
        for i, s in enumerate(others):
            if len(others) - i < MAX_FOLDERS and _size(self.st.workdir) <= MAX_BYTES:
                return
            with self._lock:  # a request of s starting now waits: it would write into a folder going away
                if s.busy:
                    continue
                shutil.rmtree(s.folder, ignore_errors=True)
                s.has_files = False


def _size(folder: Path) -> int:
    total = 0
    for p in Path(folder).rglob("*"):
        try:
            total += p.lstat().st_size if p.is_file() else 0
        except OSError:  # deleted by another request meanwhile
            continue
    return total
