"""One batch line of a journal: a JSON object that carries a checksum of its own bytes, keyed by
its journal's header; and how a journal's header line begins (`HEAD`), which makes a file vaekit's.

A line reads as it always did, one JSON object, with one more field at its end:

    {"batch": 3, "rows": [...], "skipped": [], "check": "9f2c0a51d3e87b64"}

`check` is the first 16 hex digits of the sha256 of the journal's key (`key`: the sha256 of its
header line) followed by the line's bytes as they would read without that field (everything
before `, "check"`, closed by `}`). Reading a line checks it against those bytes as written, not
against a re-serialisation, so any change inside the line, even one that keeps the JSON valid and
the row well-formed (bit rot in a digit, a score edited by hand), makes the line damaged; and a
line is another journal's once its header differs, so a header put on top of another job's lines
(another model's rows for the same files) leaves every line damaged. It guards against damage and
edits, not against forgery: whoever rewrites a line can compute its checksum too. The header line
has none: it must equal the job's settings field by field, which any edit already breaks.
"""

from __future__ import annotations

import hashlib
import re

from vaekit.fileio import dumps_json, loads_json

FIELD = "check"
# The longest line vaekit writes, with a wide margin, so a reader never holds more (a foreign
# file's line of gigabytes is refused after this many bytes, vaekit.stream.files.LineTooLong).
# A file's part of a batch line holds at most four of its paths JSON-escaped (6 characters a byte
# of 4095: 98 KB, its row's and a skipped file's path and reason) and a few numbers, and in an
# encode its latent's means in base64, which the job adds (`row_bytes`: up to 5.6 MB a file for a
# 1024 px grid model); the header holds the settings (digests, and every input the user named: as
# long as the job's own header, plus a margin).
MAX_FILE_BYTES = 1 << 18  # 256 KiB
MAX_HEADER_BYTES = 1 << 20
UNSIZED_LIMIT = 1 << 26  # a journal read without its job's layout (its shape only checked)
HEAD = b'{"vaekit_journal": '  # how every journal header vaekit writes begins (dumps_json of its header)
_TAIL = re.compile(rb', "check": "([0-9a-f]{16})"\}\n?\Z')


def line_limit(batch_size: int | None, header: dict | None = None, row_bytes: int = 0) -> int:
    """The most bytes a journal line of a job with batches of `batch_size` files may hold; `header`:
    the job's own journal header, whose `inputs` list every file or folder named (thousands of
    files from a shell glob), so a header as long as it is never refused; `row_bytes`: what a
    file's row holds beyond MAX_FILE_BYTES (encode's latent means: a 512 px grid model's are 0.7 MB
    of base64 a file)."""
    if batch_size is None:
        return UNSIZED_LIMIT
    own = 0 if header is None else len(dumps_json(header, indent=None).encode("utf-8", "surrogateescape"))
    return MAX_HEADER_BYTES + own + batch_size * (MAX_FILE_BYTES + row_bytes)


def begins_as_journal(start: bytes) -> bool:
    """Whether `start`, a file's first len(HEAD) bytes or fewer, is (a prefix of) the start of a
    journal's header: even a header a crash cut short is vaekit's, anything else a file vaekit did not write."""
    return HEAD.startswith(start) if len(start) < len(HEAD) else start == HEAD


def key(header_line: bytes) -> bytes:
    """The key of a journal's lines: the sha256 of its header line as written (newline excluded)."""
    return hashlib.sha256(header_line[:-1] if header_line.endswith(b"\n") else header_line).digest()


def _sum(journal_key: bytes, body: bytes) -> bytes:
    return hashlib.sha256(journal_key + body).hexdigest()[:16].encode()


def encode(entry: dict, journal_key: bytes) -> bytes:
    """`entry` as one line (newline included) of the journal keyed `journal_key`, its checksum last."""
    body = dumps_json(entry, indent=None).encode("utf-8", "surrogateescape")
    return body[:-1] + b', "check": "' + _sum(journal_key, body) + b'"}\n'


def decode(line: bytes, journal_key: bytes) -> tuple[object, str | None]:
    """(the entry, without its checksum, None), or (None, what is wrong with the line) in the
    journal keyed `journal_key`."""
    tail = _TAIL.search(line)
    if tail is None:
        return None, "it has no checksum at its end (edited by hand, or damaged)"
    body = line[: tail.start()] + b"}"
    if _sum(journal_key, body) != tail.group(1):
        return None, ("its checksum does not match its contents or its journal's header (edited by hand, damaged, "
                      "or another journal's line)")
    try:
        return loads_json(body.decode("utf-8", "surrogateescape")), None
    except ValueError:
        return None, "not JSON"
