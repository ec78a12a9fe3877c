"""What keeps the web app to the people it was started for.

A browser sends any site's requests to 127.0.0.1 if that site asks it to, and a DNS name an
attacker controls can resolve to 127.0.0.1 (DNS rebinding): the app then sees a request with
`Host: evil.example:PORT`, and Gradio's CORS middleware answers it as same-origin. So
`HostGuard`, outermost in the ASGI stack (before CORS), answers only requests whose Host is
a name of the bound address (400 otherwise), and refuses a request whose Origin is another
site (403), without any CORS header.

Folders typed into the page (Train, Latent space, Open) are resolved inside one data root
(`confine`; the links in them are refused by vaekit's own scan, told `confine_to`), and switched
off when the app listens beyond this machine unless allowed.
Error messages shown in the page lose server paths (`public_message`). A name the page shows
(a folder, a run, an upload) is text, never Markdown or HTML (`md_code`, `html_text`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from vaekit.errors import BadInput

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# A request's uploads are decoded together, with their heat maps and overlays (~0.2 MB an upload
# at 128 px RGB: 2,000 uploads peaked at 1.05 GB, 1,000 at 0.89; 13 MB each at 1024 px); Gradio bounds each
# file's size (app.MAX_UPLOAD), not how many there are.
UPLOAD_SUBPIXELS = 1 << 26  # of one request's uploads at the model's reading size
UPLOAD_MAX_FILES = 256  # a gallery of more shows nothing a CSV would not
# Of one request's uploads as stored: decoding takes ~35 ns a pixel on one core, so a 280 KB PNG of
# 9400 x 9400 took 3 s and 256 of them 13 minutes, the button's queue held for everyone (~75 s here).
UPLOAD_SOURCE_PIXELS = 1 << 31


def upload_paths(paths, channels: int, read_size: int) -> list[Path]:
    """One request's uploads as paths; BadInput when there are none, or more than the app takes at
    once at this model's size (UPLOAD_SUBPIXELS of them, UPLOAD_MAX_FILES at most, 4 at least), or
    more than UPLOAD_SOURCE_PIXELS to decode."""
    if not paths:
        raise BadInput("no image given: upload one or more image files")
    most = max(4, min(UPLOAD_MAX_FILES, UPLOAD_SUBPIXELS // (channels * read_size**2)))
    if len(paths) > most:
        raise BadInput(f"{len(paths)} images uploaded; the web app takes at most {most} at a time for this model "
                       "(`vaekit anomaly-score`, `encode` and `reconstruct` take folders of any size)")
    paths = [Path(p) for p in paths]
    total = _source_pixels(paths)
    if total > UPLOAD_SOURCE_PIXELS:
        raise BadInput(f"the {len(paths)} uploaded images hold {total / 1e6:,.0f} million pixels; the web app decodes "
                       f"at most {UPLOAD_SOURCE_PIXELS / 1e6:,.0f} million at a time (upload fewer or smaller images, "
                       "or use `vaekit anomaly-score`, `encode` or `reconstruct` on a folder)")
    return paths


def _source_pixels(paths: list[Path]) -> int:
    """The pixels the uploads hold as stored, from their headers (vaekit's own open: no pixels decoded)."""
    from vaekit.images import open_image

    total = 0
    for p in paths:
        try:
            with open_image(p) as img:
                total += img.width * img.height
        except Exception:  # noqa: BLE001 - unreadable: the loader skips it and says why
            continue
    return total


def is_loopback(host: str) -> bool:
    """Whether an address to bind keeps the app on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str:
    """The host name of a Host header ("a.b:80", "[::1]:80") or of an Origin URL, lowercased ("" for
    one with a user part: "evil.example@127.0.0.1" named 127.0.0.1)."""
    if "@" in value:
        return ""
    if "://" in value:
        return (urlsplit(value).hostname or "").lower()
    return (urlsplit(f"//{value}").hostname or "").lower()


def _port(value: str, default: int = 80) -> int | None:
    """The port of a Host header or an Origin URL (its scheme's when it names none); None if malformed."""
    try:
        parts = urlsplit(value if "://" in value else f"//{value}")
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme, default)
    except ValueError:
        return None


class HostGuard:
    """ASGI middleware: refuse requests for other host names and from other sites."""

    def __init__(self, app, host: str):
        self.app = app
        self.host = host.lower().strip("[]")
        self.wildcard = self.host in ("0.0.0.0", "::", "")
        names = {self.host} | set(LOOPBACK_NAMES)
        if self.wildcard:  # every address of this machine: its own names, and any IP literal
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = names

    def allowed(self, name: str) -> bool:
        if name in self.names:
            return True
        if self.wildcard:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                return True  # a rebinding attack needs a DNS name; a literal address is not one
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.allowed(_hostname(headers.get(b"host", ""))):
            return await _refuse(scope, receive, send, 400, "unknown Host: this app answers only on its own address")
        origin = headers.get(b"origin")
        # the same origin as the Host the browser asked for: a page another program serves on this
        # machine (another port, or https) is another site, and got Gradio's CORS grant for localhost
        if origin is not None and not (self.allowed(_hostname(origin)) and origin.lower().startswith("http://")
                                       and _port(origin) == _port(headers.get(b"host", ""))):
            return await _refuse(scope, receive, send, 403, "cross-site request refused")
        await self.app(scope, receive, send)


async def _refuse(scope, receive, send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def guarded_gradio(host: str):
    """While Gradio launches, every app it creates gets HostGuard as its outermost middleware.

    Gradio builds its FastAPI app inside `launch` and adds its own CORS middleware there;
    this is the one moment to add ours outside it (middleware cannot be added once serving).
    """
    from gradio.routes import App

    original = App.__dict__["create_app"]

    def create_app(*args, **kwargs):
        server = original.__func__(*args, **kwargs)
        server.add_middleware(HostGuard, host=host)  # inserted first: runs before CORS
        return server

    App.create_app = staticmethod(create_app)
    try:
        yield
    finally:
        App.create_app = original


def confine(text: str, roots: list[Path], enabled: bool, what: str = "folder") -> Path:
    """A path typed into the page, resolved (a relative one against the first root that holds it, else
    the first) and required to lie inside one of `roots`; BadInput otherwise, or when server paths are
    switched off. The links in a folder whose images are read (Train, Latent space) are the library's
    scan's to refuse, in the walk that lists the images (`confine_to`: a walk here first, then the
    library's, missed a link made in between)."""
    if not enabled:
        raise BadInput(f"{what}s on the server are switched off: the app listens beyond this machine "
                       "(start it with --allow-server-folders to allow them)")
    if not text or not str(text).strip():
        raise BadInput(f"no {what} given: type a path inside the app's data folder")
    if "\0" in str(text) or len(str(text)) > 4096:
        raise BadInput(f"that is not a {what} path (a NUL byte, or over 4096 characters)")
    try:
        p = Path(str(text).strip()).expanduser()
        if not p.is_absolute():  # the page names a run in --runs-dir relative to it (public_path)
            p = next((r / p for r in roots if (r / p).exists()), roots[0] / p)
        p = p.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a name too long for the file system, a link loop
        raise BadInput(f"that {what} path cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if not _inside(p, roots):
        raise BadInput(f"that {what} is outside the app's data folder (--data-root); give a path inside it")
    return p


def _inside(p: Path, roots: list[Path]) -> bool:
    return any(p.is_relative_to(root.resolve()) for root in roots)


def public_path(path: str | Path, roots: list[Path]) -> str:
    """How the page shows a server path: relative to the first of `roots` it lies in (what the
    path boxes accept back), else only its last part. Never the server's folders."""
    p = Path(path)
    try:
        p = p.resolve()
    except (OSError, RuntimeError):
        pass
    for root in roots:
        try:
            return p.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return p.name or "."


_ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/'\"`(),;:]+/)*([^\s/'\"`(),;:]*)")
_ABSOLUTE_START = re.compile(r"(?<![\w.~])/(?=[^\s/'\"`(),;:])")  # the leading slash of an absolute path


def public_message(text: str, roots: list[Path]) -> str:
    """An error message for the page: paths under `roots` made relative, and any other
    absolute path cut to its last part, so the page never shows the server's folders. Each path is
    made relative to the first of `roots` it lies in, as `public_path` shows it: the runs folder
    inside the data folder made a resume command's `--out runs/r1` read `--out r1`."""
    for root in (str(r.resolve()) for r in roots):
        if root == "/":  # --data-root /: replacing "/" took every slash out ("workh2dataone"), relative paths too
            text = _ABSOLUTE_START.sub("", text)
        else:
            # only where a path starts: "/backup/data/a.png" does not lie in /data (it read "/backupa.png"), nor "/srv/a-/data/a.png"
            text = re.sub(r"(?<![^\s'\"`(),;:=])" + re.escape(root.rstrip("/")) + "/", "", text)
    return _ABSOLUTE.sub(lambda m: m.group(1) or "/", text)


def md_code(text) -> str:
    """`text` as a Markdown code span the page shows as it is: fenced by one more backtick than its
    longest run of them (one backtick in a folder name closed the span, and the rest rendered as a
    link or an image), line breaks shown as "\\uFFFD" (a new line ended the paragraph)."""
    text = re.sub(r"[\r\n]", "\uFFFD", str(text))
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if "`" in text or text[:1] == " " or text[-1:] == " " else ""  # one space each side is dropped
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(text: str) -> str:
    """A message for a toast (gr.Error, gr.Warning), which the page renders as HTML: shown as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;")
