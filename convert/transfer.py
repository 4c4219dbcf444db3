"""One HTTP(S) download into a partial file, with no trust in the server.

A server may close early, send more than it announced, ignore or misplace a requested range,
answer 416 over a partial file that is not a prefix of anything, send an HTML page with status
200, trickle, hang before its headers, never end, or redirect somewhere else entirely. Each
of these ends here in a `DownloadError` that says whether the partial file is still a correct
prefix (keep it: a later run resumes) or can never become the file (drop it).
"""
from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable

CHUNK_BYTES = 1 << 20
HEAD_BYTES = 16  # enough for every format's signature, and readable in an error message
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
UNTIL_CLOSE = -1  # a body length when there is none to go by: neither Content-Length nor chunked


@dataclass(frozen=True)
class Limits:
    stall_s: float     # longest wait for the next byte (also for the connection and the headers)
    deadline_s: float  # longest the whole download (and a wait for another one's lock) may take
    max_bytes: int     # largest file that can be the expected checkpoint


class DownloadError(Exception):
    """A download that did not produce a complete file; `drop` when the partial file can never become it."""

    def __init__(self, reason: str, drop: bool = False):
        super().__init__(reason)
        self.drop = drop


class Watchdog:
    """Enforces the overall deadline on whichever socket is in use, even inside the header parser,
    by shutting it down; a blocked read then ends at once and `check` names the cause."""

    def __init__(self, deadline_s: float):
        self.deadline_s = deadline_s
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
        if self.expired:
            self._shutdown(sock)

    def check(self) -> None:
        if self.expired:
            raise DownloadError(f"not finished within the {self.deadline_s:g} s deadline "
                                "(MAECONV_DOWNLOAD_DEADLINE_S)")

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            self._shutdown(self._socket)

    @staticmethod
    def _shutdown(sock: socket.socket | None) -> None:
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to interrupt


def download(url: str, out: BinaryIO, limits: Limits, head_problem: Callable[[bytes], str | None],
             progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Brings `out` (the partial file, resumed from its current length) to the complete body of `url`.
    `head_problem` says what is wrong with a file's first bytes, or None when they fit the format."""
    with Watchdog(limits.deadline_s) as watchdog:
        try:
            if not _attempt(url, out, limits, watchdog, head_problem, progress, log):
                # a 416 that disagreed with the partial file: the file is empty now, so no range is asked
                _attempt(url, out, limits, watchdog, head_problem, progress, log)
        except DownloadError:
            watchdog.check()
            raise
        except (OSError, http.client.HTTPException, ValueError) as error:
            watchdog.check()
            raise DownloadError(_network_problem(error, limits)) from None


def _network_problem(error: BaseException, limits: Limits) -> str:
    if isinstance(error, TimeoutError):
        return f"no data for {limits.stall_s:g} s (MAECONV_DOWNLOAD_STALL_S)"
    if isinstance(error, http.client.IncompleteRead):
        return "the body broke off or its chunked encoding is malformed"
    if isinstance(error, http.client.HTTPException):
        return f"malformed HTTP response ({type(error).__name__}: {printable(str(error)) or 'no detail'})"
    return f"network error ({printable(str(getattr(error, 'strerror', None) or error))})"


def printable(text: str, limit: int = 80) -> str:
    """Server-chosen text made safe for a one-line error: control characters escaped, length bounded."""
    text = text.strip()
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _attempt(url, out, limits, watchdog, head_problem, progress, log) -> bool:
    """One request for what the partial file lacks; False when it must be repeated from the start."""
    have = _usable_length(out, limits, head_problem, log)
    connection, response = _request(url, have, limits, watchdog)
    try:
        if response.status == 416 and have:
            return _range_refused(response, out, have, log)
        start, length = _body_extent(response, have, limits)
        if start == 0 and have and log:
            log("the server ignores the range and sends the whole file; starting over")
        _receive(response, out, start, length, limits, watchdog, head_problem, progress)
        return True
    finally:
        connection.close()


def _usable_length(out: BinaryIO, limits: Limits, head_problem, log) -> int:
    """How much of the partial file a resume can build on: nothing when it cannot be the file's start."""
    have = os.fstat(out.fileno()).st_size
    if not have:
        return 0
    out.seek(0)
    problem = head_problem(out.read(HEAD_BYTES)) if have >= HEAD_BYTES else "shorter than any checkpoint's start"
    if problem is None and have > limits.max_bytes:
        problem = f"larger than the {limits.max_bytes} bytes the file can have"
    if problem is None:
        return have
    if log:
        log(f"discarding the partial file ({problem}); starting over")
    out.truncate(0)
    return 0


def _request(url: str, have: int, limits: Limits, watchdog: Watchdog):
    """The connection and response for bytes `have`- of `url`, after following redirects."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"refusing to fetch {url!r}: only http and https URLs are followed")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname, parts.port, timeout=limits.stall_s)
        try:
            connection.connect()
            watchdog.watch(connection.sock)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            # identity: a compressed body's length says nothing about the file's length
            headers = {"User-Agent": "maeconv", "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        if response.status not in REDIRECTS:
            return connection, response
        location = response.getheader("Location")
        connection.close()
        if not location:
            raise DownloadError(f"HTTP {response.status} redirect without a Location")
        url = urllib.parse.urljoin(url, location.strip())
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def _range_refused(response, out: BinaryIO, have: int, log) -> bool:
    """A 416 to `bytes=have-` means the partial file is complete only if the server's size is `have`;
    completeness is then still for the caller to verify."""
    unit, _, extent = (response.getheader("Content-Range") or "").partition(" ")
    size = extent.partition("/")[2].strip()
    if unit != "bytes" or not size.isdigit() or int(size) == have:
        return True
    if log:
        log(f"the server's file has {size} bytes, the partial file {have}; starting over")
    out.truncate(0)
    return False


def _body_extent(response, have: int, limits: Limits) -> tuple[int, int | None]:
    """Where the body's first byte belongs in the file, and how many bytes the body must have
    (None: chunked, its end is marked in the stream; UNTIL_CLOSE: it ends when the server closes)."""
    if response.status == 200:
        start, end, size = 0, None, None
    elif response.status == 206:
        start, end, size = _content_range(response.getheader("Content-Range"))
        if start != have:
            raise DownloadError(f"asked for bytes {have}- but the server sent bytes {start}-{end}; refused")
    else:
        raise DownloadError(f"HTTP {response.status} {printable(response.reason)}".strip())
    length = _content_length(response)
    if end is not None and length in (None, UNTIL_CLOSE):
        length = end + 1 - start  # the range says how long the body is
    if end is not None and length != end + 1 - start:
        raise DownloadError(f"Content-Length {length} disagrees with Content-Range bytes {start}-{end}")
    if size is not None and end + 1 != size:
        raise DownloadError(f"bytes {start}-{end} do not end the {size}-byte file they claim to be part of")
    if length not in (None, UNTIL_CLOSE) and start + length > limits.max_bytes:
        raise DownloadError(f"the server announces {start + length} bytes, more than the {limits.max_bytes} "
                            "the file can have")
    return start, length


def _content_range(header: str | None) -> tuple[int, int, int | None]:
    unit, _, extent = (header or "").strip().partition(" ")
    span, _, size = extent.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit()) or not (size.isdigit() or size == "*"):
        raise DownloadError(f"HTTP 206 with an unusable Content-Range {header!r}")
    if int(last) < int(first):
        raise DownloadError(f"HTTP 206 with an empty Content-Range {header!r}")
    return int(first), int(last), int(size) if size.isdigit() else None


def _content_length(response) -> int | None:
    """The announced body length; None for a chunked body, UNTIL_CLOSE when there is none to go by."""
    if response.chunked:
        return None
    values = {value.strip() for value in response.headers.get_all("Content-Length") or []}
    if not values:
        return UNTIL_CLOSE
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise DownloadError(f"unusable Content-Length {', '.join(sorted(values))!r}")
    return int(next(iter(values)))


def _receive(response, out: BinaryIO, start: int, length: int | None, limits: Limits, watchdog: Watchdog,
             head_problem, progress) -> None:
    """Streams the body into `out` at `start`: nothing is written before the file's first bytes pass
    the format check; never more than `length` bytes are read, nor is the file let past the cap."""
    room = limits.max_bytes - start
    known = length not in (None, UNTIL_CLOSE)
    wanted = length if known else room + 1  # one byte past the cap proves it is exceeded
    pending = b""
    if start == 0:
        pending = _read_head(response, min(HEAD_BYTES, wanted), watchdog)
        _check_head(response, pending, length, head_problem)
    out.seek(start)
    out.truncate()
    if progress:
        progress(start + length if known else 0, start)
    received = _copy(response, out, pending, wanted, room, watchdog, progress)
    out.flush()
    os.fsync(out.fileno())
    if received > room:
        raise DownloadError(f"the body runs past {limits.max_bytes} bytes, more than the file can have",
                            drop=True)
    if known and received < length:
        raise DownloadError(f"the server closed the connection at byte {start + received} of {start + length}")
    if length == UNTIL_CLOSE:
        raise DownloadError(f"the server sent no Content-Length, so the {received} bytes received "
                            "cannot be known complete")


def _check_head(response, head: bytes, length: int | None, head_problem) -> None:
    if length not in (None, UNTIL_CLOSE) and len(head) < min(HEAD_BYTES, length):
        raise DownloadError(f"the server closed the connection at byte {len(head)} of {length}")
    problem = head_problem(head)
    if problem:
        content_type = response.getheader("Content-Type")
        raise DownloadError(problem + (f" (Content-Type {printable(content_type)})" if content_type else ""))


def _read_head(response, count: int, watchdog: Watchdog) -> bytes:
    head = b""
    while len(head) < count:
        chunk = response.read1(count - len(head))
        watchdog.check()
        if not chunk:
            break
        head += chunk
    return head


def _copy(response, out: BinaryIO, pending: bytes, wanted: int, room: int, watchdog: Watchdog,
          progress) -> int:
    """Writes `pending` and then the body until `wanted` bytes or its end; the count read, of which
    at most `room` are written."""
    received = 0
    chunk = pending
    while True:
        if chunk:
            out.write(chunk[:max(room - received, 0)])
            received += len(chunk)
            if progress:
                progress(0, len(chunk))
        if received >= wanted:
            return received
        chunk = response.read1(min(CHUNK_BYTES, wanted - received))
        watchdog.check()
        if response.chunked and isinstance(response.chunk_left, int) and response.chunk_left < 0:
            # http.client takes a negative chunk size as "read anything": those bytes are not the file
            raise http.client.IncompleteRead(b"")
        if not chunk:
            return received
