"""Official names: download into the cache with resume and checksum, from local servers on loopback;
and a battery of hostile servers, after each of which the cache holds no file that is not complete."""
import fcntl
import gzip
import hashlib
import http.server
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import torch

from maeconv.convert import hub, transfer
from maeconv.convert.pipeline import fetch_official
from maeconv.models import config

from helpers import run_cli as run, TINY, TINY_CLS, kind_state, save_official
from hostile_http import ScriptedServer, chunked, closed_port, endless, reply, reset_after, serve, slowly


def test_the_network_stack_loads_only_for_a_download():
    probe = ("import sys, maeconv.cli; print(sorted({'http.client', 'socket', 'ssl'} & set(sys.modules)));"
             "from maeconv.convert import hub; hub.limits_for(hub.CHECKPOINTS['mae_vit_base_p16']);"
             "print(sorted({'http.client', 'socket'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["[]", "['http.client', 'socket']"], done.stderr


class RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        self.requests.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def payload(tmp_path_factory, tiny_state):
    return save_official(tmp_path_factory.mktemp("payload") / "payload.pth", tiny_state).read_bytes()


@pytest.fixture
def server(tmp_path, monkeypatch, payload):
    RangeHandler.files = {"/pretrain/tiny.pth": payload, "/pretrain/corrupt.pth": payload[:-10] + b"0" * 10}
    RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    md5 = hashlib.md5(payload).hexdigest()[:6]
    monkeypatch.setenv("MAECONV_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("MAECONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_tiny", hub.Official("pretrain/tiny.pth", md5, TINY, "full"))
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_corrupt", hub.Official("pretrain/corrupt.pth", md5, TINY, "full"))
    yield payload
    httpd.shutdown()




def test_download_checks_and_caches(server, tmp_path):
    result = run("download", "mae_tiny")
    assert result.exit_code == 0, result.output
    cached = tmp_path / "cache" / "tiny.pth"
    assert cached.read_bytes() == server
    assert run("download", "mae_tiny").exit_code == 0
    assert len(RangeHandler.requests) == 1  # the second call used the cache


def test_download_resumes_a_partial_file(server, tmp_path):
    partial = tmp_path / "cache" / "tiny.pth.part"
    partial.parent.mkdir()
    partial.write_bytes(server[:1000])
    assert run("download", "mae_tiny").exit_code == 0
    assert RangeHandler.requests == [("/pretrain/tiny.pth", "bytes=1000-")]
    assert (tmp_path / "cache" / "tiny.pth").read_bytes() == server
    assert not partial.exists()


def test_mismatched_file_is_refused(server, tmp_path):
    result = run("download", "mae_corrupt")
    assert result.exit_code == 1 and "does not match the published" in result.stderr
    assert not list((tmp_path / "cache").iterdir())


def test_every_command_takes_a_name(server, tmp_path):
    result = run("inspect", "mae_tiny", "--json")
    assert result.exit_code == 0 and '"preset": "mae_vit_tiny_patch8"' in result.stdout
    assert run("torch2ms", "mae_tiny", tmp_path / "tiny.ckpt").exit_code == 0
    from maeconv import from_pretrained

    model = from_pretrained("mae_tiny", framework="torch")
    assert type(model).__name__ == "MaskedAutoencoderViT" and not model.decoder_absent


def test_unknown_name_or_server_error(server):
    result = run("download", "mae_nonexistent")
    assert result.exit_code == 1 and "not an official checkpoint name" in result.stderr
    hub.CHECKPOINTS["mae_missing"] = hub.Official("pretrain/missing.pth", None, TINY, "full")
    try:
        result = run("download", "mae_missing")
        assert result.exit_code == 1 and "HTTP 404" in result.stderr
    finally:
        del hub.CHECKPOINTS["mae_missing"]


def test_known_names_point_at_the_official_links():
    assert hub.url_of("mae_pretrain_vit_base") == "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
    assert hub.CHECKPOINTS["mae_finetuned_vit_huge"].md5_prefix == "2541f2"
    assert hub.CHECKPOINTS["mae_visualize_vit_large"].kind == "full"


def test_mindformers_and_mindcv_names_point_at_their_own_files(monkeypatch):
    """MindFormers' card links its own converted .ckpt (MindFormerBook), MindCV's default_cfgs its
    fine-tuned ViT-B, named with its sha256 prefix."""
    monkeypatch.delenv("MAECONV_BASE_URL", raising=False)
    assert hub.url_of("mae_vit_base_p16") == ("https://ascend-repo-modelzoo.obs.cn-east-2.myhuaweicloud.com"
                                              "/XFormer_for_mindspore/mae/mae_vit_base_p16.ckpt")
    assert (hub.CHECKPOINTS["mae_vit_base_p16"].preset, hub.CHECKPOINTS["mae_vit_base_p16"].kind) == (
        "mae_vit_base_patch16", "encoder")
    assert hub.url_of("mae_b_16_224_finetune") == ("https://download.mindspore.cn/toolkits/mindcv/mae/"
                                                   "mae_b_16_224_finetune-cc05b899.ckpt")
    entry = hub.CHECKPOINTS["mae_b_16_224_finetune"]
    assert (entry.preset, entry.kind, entry.sha256_prefix) == ("vit_base_patch16", "classifier", "cc05b899")


@pytest.mark.parametrize("scheme, good", [("mindcv", True), ("mindcv", False), ("mindformers", True)])
def test_a_ckpt_download_is_checked_by_its_sha256_prefix(server, tmp_path, monkeypatch, tiny_classifier_state,
                                                         scheme, good):
    """A MindSpore-family .ckpt as MindCV and MindFormers publish them: it enters the cache only with
    the sha256 prefix its name gives (where it gives one) and parsing as its preset and kind."""
    made = tmp_path / "made.ckpt"
    run("convert", save_official(tmp_path / "cls.pth", tiny_classifier_state), made, "--to", scheme)
    data = made.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:8] if good else "00000000"
    RangeHandler.files["/mindcv/mae/tiny.ckpt"] = data
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_tiny_ms", hub.Official(
        "mindcv/mae/tiny.ckpt", None, TINY_CLS, "classifier", base="https://unused.example", sha256_prefix=digest))
    result = run("download", "mae_tiny_ms")
    cached = tmp_path / "cache" / "tiny.ckpt"
    if good:
        assert result.exit_code == 0, result.output
        assert cached.read_bytes() == data
    else:
        assert result.exit_code == 1 and "sha256" in result.stderr and "does not match the published" in result.stderr
        assert not cached.exists()


# --- close names ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [
    (["download", "mae_pretrain_vit_bsae"],
     "Error: mae_pretrain_vit_bsae: not an official checkpoint name; did you mean mae_pretrain_vit_base?"),
    (["inspect", "mae_pretrain_vit_bsae"],
     "Error: mae_pretrain_vit_bsae: no such file or official checkpoint name; did you mean mae_pretrain_vit_base?"),
    (["torch2ms", "mae_visualise_vit_large", "out.ckpt"],
     "Error: mae_visualise_vit_large: no such file or official checkpoint name; did you mean mae_visualize_vit_large?"),
    (["inspect", "models/mae_finetune_vit_huge.pth"], "Error: models/mae_finetune_vit_huge.pth: no such file or "
                                                      "official checkpoint name; did you mean mae_finetuned_vit_huge?"),
    (["download", "mae_pretrain_vit"], "Error: mae_pretrain_vit: not an official checkpoint name; did you mean "
                                       "mae_pretrain_vit_base, mae_pretrain_vit_huge or mae_pretrain_vit_large?"),
    (["download", "resnet50"],
     "Error: resnet50: not an official checkpoint name; `maeconv download --list` lists them"),
    (["inspect", "nowhere/model.pth"], "Error: nowhere/model.pth: no such file"),
])
def test_a_mistyped_name_gets_the_close_official_names(tmp_path, monkeypatch, args, error):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAECONV_CACHE", str(tmp_path / "cache"))
    assert _one_line_error(run(*args)) == error
    assert not (tmp_path / "cache").exists()  # nothing is fetched for a name that is not official


# --- hostile servers ------------------------------------------------------------------------------
# Each case: a script factory (given the payload P, the tiny full checkpoint), the name downloaded
# ("mae_tiny" has the payload's md5 prefix; "mae_tiny_unsummed" has none, so only the parse can tell),
# texts the one-line error must hold, and what the cache then holds.

CACHED, NO_PARTIAL, PREFIX, UNCHANGED = "cached", "no partial", "prefix", "unchanged"
STALL_S, DEADLINE_S = 0.4, 1.5
CAP = hub.size_cap(hub.Official("tiny.pth", None, TINY, "full"))
HTML = b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n"


@pytest.fixture
def hostile(tmp_path, monkeypatch, payload):
    scripted = ScriptedServer()
    monkeypatch.setenv("MAECONV_BASE_URL", scripted.url)
    monkeypatch.setenv("MAECONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAECONV_DOWNLOAD_STALL_S", str(STALL_S))
    monkeypatch.setenv("MAECONV_DOWNLOAD_DEADLINE_S", str(DEADLINE_S))
    md5 = hashlib.md5(payload).hexdigest()[:6]
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_tiny", hub.Official("pretrain/tiny.pth", md5, TINY, "full"))
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_tiny_unsummed", hub.Official("pretrain/tiny.pth", None, TINY, "full"))
    yield scripted
    scripted.close()


def answer(status, headers=(), body=b""):
    return lambda request, connection, server: reply(connection, status, headers, body)


def then_silence(status_and_headers, body=b""):
    def script(request, connection, server):
        connection.sendall(status_and_headers + body)
        server.silence()
    return script


def redirect_to_login(request, connection, server):
    if request.path == "/login":
        reply(connection, "200 OK", [("Content-Type", "text/html"), ("Content-Length", len(HTML))], HTML)
    else:
        reply(connection, "302 Found", [("Location", "/login"), ("Content-Length", 0)])


def redirect_to_silence(request, connection, server):
    if request.path == "/slow":
        server.silence()
    else:
        reply(connection, "302 Found", [("Location", "/slow"), ("Content-Length", 0)])


def redirect_to_mirror(payload):
    def script(request, connection, server):
        if request.path == "/mirror/tiny.pth":
            serve(payload)(request, connection, server)
        else:
            reply(connection, "302 Found", [("Location", "../mirror/tiny.pth"), ("Content-Length", 0)])
    return script


def chunked_endless(request, connection, server):
    reply(connection, "200 OK", [("Transfer-Encoding", "chunked")])
    while not server.stopped.is_set():
        connection.sendall(chunked(b"\x80" * 65536))


def ok_length(P, n=None):
    return [("Content-Length", len(P) if n is None else n)]


CHUNKED = [("Transfer-Encoding", "chunked")]

FRESH_CASES = {
    # short bodies (the server closes early)
    "short-half": (lambda P: answer("200 OK", ok_length(P), P[:len(P) // 2]), "mae_tiny",
                   ["the server closed the connection at byte", "bytes kept in"], PREFIX),
    "short-3-bytes": (lambda P: answer("200 OK", ok_length(P), P[:3]), "mae_tiny",
                      ["the server closed the connection at byte 3 of"], NO_PARTIAL),
    "short-headers-only": (lambda P: answer("200 OK", ok_length(P)), "mae_tiny",
                           ["the server closed the connection at byte 0 of"], NO_PARTIAL),
    "short-reset": (lambda P: reset_after(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(P) + P[:50_000]),
                    "mae_tiny", ["network error", "reset"], PREFIX),
    # over-long bodies (more than announced: read up to Content-Length only, which then fails the checks)
    "long-understated": (lambda P: answer("200 OK", ok_length(P, len(P) - 100), P), "mae_tiny",
                         ["does not match the published", "removed"], NO_PARTIAL),
    "long-understated-no-md5": (lambda P: answer("200 OK", ok_length(P, len(P) - 100), P), "mae_tiny_unsummed",
                                ["the file does not parse: not a readable PyTorch checkpoint", "removed"], NO_PARTIAL),
    "long-announced-over-cap": (lambda P: answer("200 OK", ok_length(P, 10**10), P), "mae_tiny",
                                [f"announces 10000000000 bytes, more than the {CAP}"], NO_PARTIAL),
    # no usable Content-Length
    "length-missing": (lambda P: answer("200 OK", [], P), "mae_tiny",
                       ["no Content-Length", "cannot be known complete", "bytes kept in"], PREFIX),
    "length-not-a-number": (lambda P: answer("200 OK", ok_length(P, "lots"), P), "mae_tiny",
                            ["unusable Content-Length 'lots'"], NO_PARTIAL),
    "length-negative": (lambda P: answer("200 OK", ok_length(P, -5), P), "mae_tiny",
                        ["unusable Content-Length '-5'"], NO_PARTIAL),
    "length-twice": (lambda P: answer("200 OK", ok_length(P) + ok_length(P, len(P) + 9), P), "mae_tiny",
                     ["unusable Content-Length"], NO_PARTIAL),
    # broken chunked encoding
    "chunk-size-not-hex": (lambda P: answer("200 OK", CHUNKED, chunked(P[:4096]) + b"zz\r\n" + P[4096:]),
                           "mae_tiny", ["chunked encoding is malformed", "4096 bytes kept in"], PREFIX),
    "chunk-size-negative": (lambda P: answer("200 OK", CHUNKED, chunked(P[:4096]) + b"-10\r\n" + P[4096:]),
                            "mae_tiny", ["chunked encoding is malformed", "4096 bytes kept in"], PREFIX),
    "chunk-cut-short": (lambda P: answer("200 OK", CHUNKED, chunked(P[:4096]) + b"4000\r\n" + P[4096:4196]),
                        "mae_tiny", ["chunked encoding is malformed"], PREFIX),
    "chunk-no-last-chunk": (lambda P: answer("200 OK", CHUNKED, chunked(P[:100_000], P[100_000:])),
                            "mae_tiny", ["chunked encoding is malformed", "bytes kept in"], PREFIX),
    "chunk-size-line-endless": (lambda P: answer("200 OK", CHUNKED, b"1" * 70_000), "mae_tiny",
                                ["malformed HTTP response"], NO_PARTIAL),
    # pages that are not checkpoints, with status 200
    "html-page": (lambda P: answer("200 OK", [("Content-Type", "text/html"), ("Content-Length", len(HTML))], HTML),
                  "mae_tiny", ["not a PyTorch checkpoint: it starts with b'<!DOCTYPE html>",
                               "(Content-Type text/html)"], NO_PARTIAL),
    "html-page-chunked": (lambda P: answer("200 OK", CHUNKED, chunked(HTML, b"")), "mae_tiny",
                          ["not a PyTorch checkpoint"], NO_PARTIAL),
    "json-error": (lambda P: answer("200 OK", ok_length(P, 23), b'{"error": "rate limit"}'), "mae_tiny",
                   ["not a PyTorch checkpoint: it starts with b'{\"error\": \"rate"], NO_PARTIAL),
    "empty-200": (lambda P: answer("200 OK", ok_length(P, 0)), "mae_tiny",
                  ["empty body, not a PyTorch checkpoint"], NO_PARTIAL),
    "gzip-encoded": (lambda P: answer("200 OK", [("Content-Encoding", "gzip")] + ok_length(gzip.compress(P)),
                                      gzip.compress(P)),
                     "mae_tiny", ["not a PyTorch checkpoint: it starts with b'\\x1f\\x8b"], NO_PARTIAL),
    "ssh-banner": (lambda P: answer("200 OK", ok_length(P, 21), b"SSH-2.0-OpenSSH_9.6\r\n"), "mae_tiny",
                   ["not a PyTorch checkpoint: it starts with b'SSH-2.0"], NO_PARTIAL),
    "not-http-at-all": (lambda P: lambda r, c, s: c.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"), "mae_tiny",
                        ["malformed HTTP response"], NO_PARTIAL),
    "server-error": (lambda P: answer("503 Service Unavailable", ok_length(P, 0)), "mae_tiny",
                     ["HTTP 503 Service Unavailable"], NO_PARTIAL),
    # silence: hangs before or after headers, stalls, trickles
    "hang-before-headers": (lambda P: lambda r, c, s: s.silence(), "mae_tiny",
                            [f"no data for {STALL_S:g} s (MAECONV_DOWNLOAD_STALL_S)"], NO_PARTIAL),
    "hang-after-status-line": (lambda P: then_silence(b"HTTP/1.1 200 OK\r\n"), "mae_tiny",
                               [f"no data for {STALL_S:g} s"], NO_PARTIAL),
    "hang-after-headers": (lambda P: then_silence(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(P)),
                           "mae_tiny", [f"no data for {STALL_S:g} s"], NO_PARTIAL),
    "stall-mid-body": (lambda P: then_silence(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(P), P[:5000]),
                       "mae_tiny", [f"no data for {STALL_S:g} s", "5000 bytes kept in"], PREFIX),
    "trickle-body": (lambda P: slowly(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(P) + P,
                                      pause=0.05, piece=64),
                     "mae_tiny", [f"not finished within the {DEADLINE_S:g} s deadline (MAECONV_DOWNLOAD_DEADLINE_S)",
                                  "bytes kept in"], PREFIX),
    "trickle-headers": (lambda P: slowly(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: y\r\n" * 10_000, pause=0.05, piece=1),
                        "mae_tiny", [f"not finished within the {DEADLINE_S:g} s deadline"], NO_PARTIAL),
    # endless bodies: the size cap
    "endless-no-length": (lambda P: endless(b"HTTP/1.1 200 OK\r\n\r\n" + P), "mae_tiny",
                          [f"the body runs past {CAP} bytes", "removed"], NO_PARTIAL),
    "endless-chunked": (lambda P: chunked_endless, "mae_tiny", [f"the body runs past {CAP} bytes", "removed"],
                        NO_PARTIAL),
    "endless-giant-chunk": (lambda P: endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                              b"ffffffffffff\r\n" + P),
                            "mae_tiny", [f"the body runs past {CAP} bytes", "removed"], NO_PARTIAL),
    # redirects to something bad
    "redirect-loop": (lambda P: answer("302 Found", [("Location", "/pretrain/tiny.pth"), ("Content-Length", 0)]),
                      "mae_tiny", ["more than 5 redirects"], NO_PARTIAL),
    "redirect-to-file": (lambda P: answer("301 Moved", [("Location", "file:///etc/passwd")]), "mae_tiny",
                         ["refusing to fetch 'file:///etc/passwd'"], NO_PARTIAL),
    "redirect-to-ftp": (lambda P: answer("307 Temporary", [("Location", "ftp://127.0.0.1/tiny.pth")]), "mae_tiny",
                        ["refusing to fetch 'ftp://127.0.0.1/tiny.pth'"], NO_PARTIAL),
    "redirect-without-location": (lambda P: answer("302 Found", ok_length(P, 0)), "mae_tiny",
                                  ["HTTP 302 redirect without a Location"], NO_PARTIAL),
    "redirect-to-login-page": (lambda P: redirect_to_login, "mae_tiny", ["not a PyTorch checkpoint", "text/html"],
                               NO_PARTIAL),
    "redirect-to-closed-port": (lambda P: answer("302 Found", [("Location", f"http://127.0.0.1:{closed_port()}/x")]),
                                "mae_tiny", ["network error (Connection refused)"], NO_PARTIAL),
    "redirect-to-silence": (lambda P: redirect_to_silence, "mae_tiny", [f"no data for {STALL_S:g} s"], NO_PARTIAL),
    # answers that are odd but honest: the file arrives whole and nothing else
    "long-junk-after-length": (lambda P: answer("200 OK", ok_length(P), P + b"\0junk" * 1000), "mae_tiny", [], CACHED),
    "chunked-well-formed": (lambda P: answer("200 OK", CHUNKED, chunked(P[:7], P[7:100_000], P[100_000:], b"")),
                            "mae_tiny", [], CACHED),
    "206-unasked-whole-file": (lambda P: answer("206 Partial", content_range(0, None, length=len(P))(P), P),
                               "mae_tiny", [], CACHED),
    "redirect-relative-to-mirror": (lambda P: redirect_to_mirror(P), "mae_tiny", [], CACHED),
}


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def _cache_holds(tmp_path, payload, fate, before=None):
    """The cache holds the complete file, or nothing but a partial file that is a true prefix of it."""
    cache = tmp_path / "cache"
    files = {path.name: path.read_bytes() for path in cache.iterdir()} if cache.exists() else {}
    if fate == CACHED:
        assert files == {"tiny.pth": payload}
        return
    assert set(files) <= {"tiny.pth.part"}, files
    partial = files.get("tiny.pth.part")
    if fate == NO_PARTIAL:
        assert partial is None
    elif fate == UNCHANGED:
        assert partial == before
    else:
        assert partial and payload.startswith(partial) and len(partial) < len(payload) + (fate == PREFIX)


def _download_ends(tmp_path, payload, name, texts, fate, before=None):
    result = run("download", name)
    if fate == CACHED:
        assert result.exit_code == 0, result.output
    else:
        error = _one_line_error(result)
        assert error.startswith("Error: http://127.0.0.1:"), error
        for text in texts:
            assert text in error, error
        if fate in (PREFIX, UNCHANGED):
            assert error.endswith("run the command again to resume"), error
        elif "removed" not in texts:
            assert error.endswith("nothing kept"), error
    _cache_holds(tmp_path, payload, fate, before)


@pytest.mark.parametrize("case", FRESH_CASES.values(), ids=FRESH_CASES.keys())
def test_hostile_server_from_scratch(hostile, tmp_path, payload, case):
    script_for, name, texts, fate = case
    hostile.script = script_for(payload)
    start = time.monotonic()
    _download_ends(tmp_path, payload, name, texts, fate)
    assert time.monotonic() - start < DEADLINE_S + 2


def partial_answer(status, headers, start=1000):
    """A 206-style answer carrying the payload from `start`, with the given headers."""
    return lambda P: answer(status, headers(P), P[start:])


def content_range(first, last, total=None, length=None):
    return lambda P: [("Content-Length", len(P) - 1000 if length is None else length),
                      ("Content-Range", f"bytes {first}-{len(P) - 1 if last is None else last}/"
                                        f"{len(P) if total is None else total}")]


def refuse_range(with_size=True):
    def script(request, connection, server):
        size = len(server.files["partial"])
        reply(connection, "416 Range Not Satisfiable", [("Content-Range", f"bytes */{size}")] if with_size else [])
    return lambda P: script


# Each case: a script factory, the name, the partial file before (from the payload P), texts, fate.
RESUME_CASES = {
    # a 200 answered to a range request: start over, never append
    "200-whole-file": (lambda P: answer("200 OK", ok_length(P), P), "mae_tiny", lambda P: P[:1000], [], CACHED),
    "200-html-page": (lambda P: answer("200 OK", [("Content-Type", "text/html")] + ok_length(HTML), HTML),
                      "mae_tiny", lambda P: P[:1000], ["not a PyTorch checkpoint", "1000 bytes kept in"], UNCHANGED),
    "200-no-length": (lambda P: answer("200 OK", [], P), "mae_tiny", lambda P: P[:1000],
                      ["no Content-Length"], PREFIX),
    # a 206 that is not the range asked for
    "206-from-zero": (lambda P: answer("206 Partial", content_range(0, None, length=len(P))(P), P), "mae_tiny",
                      lambda P: P[:1000], ["asked for bytes 1000- but the server sent bytes 0-"], UNCHANGED),
    "206-from-earlier": (partial_answer("206 Partial", content_range(500, None)), "mae_tiny", lambda P: P[:1000],
                         ["asked for bytes 1000- but the server sent bytes 500-"], UNCHANGED),
    "206-from-later": (partial_answer("206 Partial", content_range(2000, None)), "mae_tiny", lambda P: P[:1000],
                       ["asked for bytes 1000- but the server sent bytes 2000-"], UNCHANGED),
    "206-no-content-range": (partial_answer("206 Partial", lambda P: ok_length(P, len(P) - 1000)), "mae_tiny",
                             lambda P: P[:1000], ["HTTP 206 with an unusable Content-Range None"], UNCHANGED),
    "206-garbage-content-range": (partial_answer("206 Partial", content_range(1000, "oops")), "mae_tiny",
                                  lambda P: P[:1000], ["unusable Content-Range 'bytes 1000-oops/"], UNCHANGED),
    "206-length-disagrees": (partial_answer("206 Partial", content_range(1000, None, length=99)), "mae_tiny",
                             lambda P: P[:1000], ["Content-Length 99 disagrees with Content-Range"], UNCHANGED),
    "206-not-to-the-end": (partial_answer("206 Partial", content_range(1000, 1999, length=1000)), "mae_tiny",
                           lambda P: P[:1000], ["bytes 1000-1999 do not end the"], UNCHANGED),
    "206-file-over-cap": (partial_answer("206 Partial", content_range(1000, 10**10 - 1, 10**10, 10**10 - 1000)),
                          "mae_tiny", lambda P: P[:1000], ["announces 10000000000 bytes, more than the"], UNCHANGED),
    "206-chunked-cut": (lambda P: answer("206 Partial", [("Content-Range", f"bytes 1000-{len(P) - 1}/{len(P)}")]
                                         + CHUNKED, chunked(P[1000:9000]) + b"0\r\n\r\n"), "mae_tiny",
                        lambda P: P[:1000], ["closed the connection at byte 9000 of", "9000 bytes kept in"], PREFIX),
    "206-chunked": (lambda P: answer("206 Partial", [("Content-Range", f"bytes 1000-{len(P) - 1}/{len(P)}")] + CHUNKED,
                                     chunked(P[1000:9000], P[9000:], b"")), "mae_tiny", lambda P: P[:1000], [], CACHED),
    "206-without-length": (lambda P: answer("206 Partial", content_range(1000, None)(P)[1:], P[1000:]), "mae_tiny",
                           lambda P: P[:1000], [], CACHED),
    "206-short": (lambda P: answer("206 Partial", content_range(1000, None)(P), P[1000:5000]), "mae_tiny",
                  lambda P: P[:1000], ["closed the connection at byte 5000 of", "5000 bytes kept in"], PREFIX),
    # a 416 over a partial file: verified, never assumed complete
    "416-junk-after-a-right-start": (refuse_range(), "mae_tiny", lambda P: P[:16] + b"\0" * (len(P) - 16),
                                     ["does not match the published", "removed"], NO_PARTIAL),
    "416-junk-no-md5": (refuse_range(), "mae_tiny_unsummed", lambda P: P[:16] + b"\0" * (len(P) - 16),
                        ["the file does not parse: not a readable PyTorch checkpoint", "removed"], NO_PARTIAL),
    "416-truncated-no-md5": (refuse_range(), "mae_tiny_unsummed", lambda P: P[:1000],
                             ["the file does not parse: not a readable PyTorch checkpoint", "removed"], NO_PARTIAL),
    "416-without-content-range": (refuse_range(with_size=False), "mae_tiny", lambda P: P[:1000],
                                  ["does not match the published", "removed"], NO_PARTIAL),
    "416-complete-partial": (refuse_range(), "mae_tiny", lambda P: P, [], CACHED),
    # a partial file that cannot be the start of the file is not built on
    "partial-not-a-checkpoint-start": (serve, "mae_tiny", lambda P: HTML * 10, [], CACHED),
    "partial-longer-than-the-file": (serve, "mae_tiny", lambda P: P + b"\0" * 100, [], CACHED),
    "partial-over-the-cap": (serve, "mae_tiny", lambda P: P + b"\0" * CAP, [], CACHED),
}


@pytest.mark.parametrize("case", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_hostile_server_over_a_partial_file(hostile, tmp_path, payload, case):
    script_for, name, partial_of, texts, fate = case
    before = partial_of(payload)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.pth.part").write_bytes(before)
    hostile.files["partial"] = before
    hostile.script = script_for(payload)
    _download_ends(tmp_path, payload, name, texts, fate, before)
    if before[:4] == payload[:4] and len(before) <= CAP:
        assert hostile.requests[0] == f"bytes={len(before)}-"  # a plausible partial file is resumed
    else:
        assert hostile.requests == [None]  # one that cannot be the start is not


@pytest.fixture(scope="module")
def other_files(tmp_path_factory, tiny_state, tiny_classifier_state):
    """Files that parse, or nearly, but are not the tiny full checkpoint."""
    folder = tmp_path_factory.mktemp("others")
    legacy = folder / "legacy.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in tiny_state.items()}}, legacy,
               _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(folder / "text.zip", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    torch.save({"model": {}}, folder / "empty.pth")
    return {"classifier": save_official(folder / "classifier.pth", tiny_classifier_state).read_bytes(),
            "encoder": save_official(folder / "encoder.pth", kind_state(TINY, "encoder")).read_bytes(),
            "legacy": legacy.read_bytes(), "zip-of-text": (folder / "text.zip").read_bytes(),
            "no-tensors": (folder / "empty.pth").read_bytes()}


@pytest.mark.parametrize("served, text", [
    ("classifier", "holds a vit_tiny_patch8 classifier checkpoint, not the expected mae_vit_tiny_patch8 full"),
    ("encoder", "holds a mae_vit_tiny_patch8 encoder checkpoint, not the expected mae_vit_tiny_patch8 full"),
    ("zip-of-text", "the file does not parse: "),
    ("no-tensors", "the file does not parse: "),
])
def test_the_file_must_be_the_names_preset_and_kind(hostile, tmp_path, payload, other_files, served, text):
    hostile.script = serve(other_files[served])
    error = _one_line_error(run("download", "mae_tiny_unsummed"))
    assert text in error and error.endswith("the file is removed"), error
    _cache_holds(tmp_path, payload, NO_PARTIAL)


def test_a_legacy_pickle_under_a_preset_alias_is_accepted(hostile, tmp_path, monkeypatch, other_files):
    monkeypatch.setitem(config.ALIASES, "mae_vit_tiny_p8", TINY)
    monkeypatch.setitem(hub.CHECKPOINTS, "mae_tiny_legacy",
                        hub.Official("pretrain/tiny.pth", None, "mae_vit_tiny_p8", "full"))
    hostile.script = serve(other_files["legacy"])
    assert other_files["legacy"][:1] == b"\x80"
    result = run("download", "mae_tiny_legacy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "tiny.pth").read_bytes() == other_files["legacy"]


@pytest.mark.parametrize("first_answer, kept", [
    (lambda P: answer("200 OK", ok_length(P), P[:60_000]), 60_000),
    (lambda P: then_silence(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(P), P[:5000]), 5000),
    (lambda P: answer("200 OK", CHUNKED, chunked(P[:100_000], P[100_000:])), None),
    (lambda P: answer("200 OK", [], P), None),
], ids=["short", "stalled", "chunks-cut", "no-length"])
def test_an_interrupted_download_resumes_later(hostile, tmp_path, payload, first_answer, kept):
    kept = len(payload) if kept is None else kept
    hostile.script = first_answer(payload)
    assert f"{kept} bytes kept in" in _one_line_error(run("download", "mae_tiny"))
    hostile.script = serve(payload)
    assert run("download", "mae_tiny").exit_code == 0
    assert hostile.requests[-1] == f"bytes={kept}-"
    _cache_holds(tmp_path, payload, CACHED)


def test_an_endless_body_writes_no_more_than_the_cap(hostile, tmp_path, payload):
    hostile.script = endless(b"HTTP/1.1 200 OK\r\n\r\n" + payload)
    limits = transfer.Limits(stall_s=1, deadline_s=5, max_bytes=300_000)
    with open(tmp_path / "partial", "w+b") as out:
        with pytest.raises(transfer.DownloadError, match="runs past 300000 bytes") as caught:
            transfer.download(f"{hostile.url}/x", out, limits, lambda head: None)
    assert caught.value.drop
    assert (tmp_path / "partial").read_bytes() == payload + bytes(300_000 - len(payload))


def test_the_size_cap_can_be_set(hostile, tmp_path, payload, monkeypatch):
    monkeypatch.setenv("MAECONV_DOWNLOAD_MAX_BYTES", "100000")
    hostile.script = serve(payload)
    assert f"announces {len(payload)} bytes, more than the 100000" in _one_line_error(run("download", "mae_tiny"))
    assert hub.size_cap(hub.CHECKPOINTS["mae_pretrain_vit_base_full"]) > 447_631_360  # MAE-FACTS: base full fp32


@pytest.mark.parametrize("variable, value", [
    ("MAECONV_DOWNLOAD_STALL_S", "soon"), ("MAECONV_DOWNLOAD_STALL_S", "nan"),
    ("MAECONV_DOWNLOAD_DEADLINE_S", "-1"), ("MAECONV_DOWNLOAD_DEADLINE_S", "inf"),
    ("MAECONV_DOWNLOAD_MAX_BYTES", "0"),
])
def test_a_bad_limit_setting_is_named(hostile, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert (_one_line_error(run("download", "mae_tiny"))
            == f"Error: {variable}: expected a positive number, got {value!r}")
    assert hostile.requests == []


def test_a_second_download_of_a_name_waits_for_the_first(hostile, tmp_path, payload):
    hostile.script = slowly(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload,
                            pause=0.03, piece=8192)
    paths, logs, failures = [None, None], [[], []], []

    def fetch(index):
        try:
            paths[index] = fetch_official("mae_tiny", log=logs[index].append)
        except Exception as error:  # reported below, in the test's thread
            failures.append(error)

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(10)
    assert not failures
    assert paths == [tmp_path / "cache" / "tiny.pth"] * 2
    assert hostile.requests == [None]  # one download; the other waited for it and used its file
    assert sum("waiting for another download of mae_tiny to finish" in log for log in logs) == 1
    _cache_holds(tmp_path, payload, CACHED)


def test_a_lock_held_past_the_deadline_is_a_clear_error(hostile, tmp_path, payload, monkeypatch):
    monkeypatch.setenv("MAECONV_DOWNLOAD_DEADLINE_S", "0.5")
    partial = tmp_path / "cache" / "tiny.pth.part"
    partial.parent.mkdir()
    partial.write_bytes(payload[:1000])
    with open(partial, "r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        error = _one_line_error(run("download", "mae_tiny"))
    assert error == (f"Error: mae_tiny: another download of it is still writing {partial} after 0.5 s; "
                     "try again when it ends")
    assert partial.read_bytes() == payload[:1000] and hostile.requests == []


def test_progress_counts_every_byte(hostile, tmp_path, payload):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.pth.part").write_bytes(payload[:1000])
    hostile.script = serve(payload)
    calls = []
    fetch_official("mae_tiny", progress=lambda total, advance: calls.append((total, advance)))
    assert calls[0] == (len(payload), 1000) and sum(advance for _, advance in calls) == len(payload)


def test_a_failed_forced_download_leaves_the_cached_file(hostile, tmp_path, payload):
    hostile.script = serve(payload)
    assert run("download", "mae_tiny").exit_code == 0
    hostile.script = answer("200 OK", [("Content-Length", len(HTML))], HTML)
    assert "not a PyTorch checkpoint" in _one_line_error(run("download", "mae_tiny", "--force"))
    _cache_holds(tmp_path, payload, CACHED)


def test_every_command_reports_a_bad_download_in_one_line(hostile, tmp_path, payload):
    hostile.script = answer("200 OK", [("Content-Length", len(HTML))], HTML)
    for args in (["inspect", "mae_tiny"], ["torch2ms", "mae_tiny", tmp_path / "out.ckpt"]):
        assert "not a PyTorch checkpoint: it starts with b'<!DOCTYPE" in _one_line_error(run(*args))
    assert not (tmp_path / "out.ckpt").exists()
    _cache_holds(tmp_path, payload, NO_PARTIAL)
