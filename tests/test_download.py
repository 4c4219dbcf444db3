"""Official names: download into the cache with resume and checksum, from a local server on loopback."""
import hashlib
import http.server
import threading

import pytest
from click.testing import CliRunner

from maeconv.convert import hub
from maeconv.convert.cli import cli

from helpers import TINY, save_official


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


@pytest.fixture
def server(tmp_path, monkeypatch, tiny_state):
    payload = save_official(tmp_path / "payload.pth", tiny_state).read_bytes()
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


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


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


def test_mismatched_file_is_refused(server, tmp_path):
    result = run("download", "mae_corrupt")
    assert result.exit_code == 1 and "does not match the published" in result.stderr
    assert not list((tmp_path / "cache").iterdir())


def test_every_command_takes_a_name(server, tmp_path):
    result = run("inspect", "mae_tiny", "--json")
    assert result.exit_code == 0 and '"preset": "mae_vit_tiny_patch8"' in result.stdout
    assert run("torch2ms", "mae_tiny", tmp_path / "tiny.ckpt").exit_code == 0
    from maeconv.convert import from_pretrained

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
    assert hub.CHECKPOINTS["mae_vit_base_p16"] == hub.CHECKPOINTS["mae_pretrain_vit_base"]
    assert hub.CHECKPOINTS["mae_visualize_vit_large"].kind == "full"


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


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
