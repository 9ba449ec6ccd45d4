"""graft predict on http URLs, served by a loopback server started here (127.0.0.1 only)."""
from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from graftkit.errors import GraftError
from graftkit.serve.fetch import fetch_bytes, fetch_image
from test_serve import COLOURS, make_package, run_cli

SLEEP = 3.0
TIMEOUT = 0.5


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, body: bytes, ctype: str, length: bool = True):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        if self.path == "/green.png":
            self._send(_png(COLOURS["green"]), "image/png")
        elif self.path == "/slow.png":
            time.sleep(SLEEP)
            self._send(_png(COLOURS["red"]), "image/png")
        elif self.path == "/page.png":  # a name that looks like an image, an HTML body
            self._send(b"<!DOCTYPE html><html><body>not found, sorry</body></html>", "text/html")
        elif self.path == "/huge.png":  # no Content-Length: the size limit must hold while streaming
            self.close_connection = True
            self._send(_png(COLOURS["blue"]) + b"\0" * (3 * 2**20), "image/png", length=False)
        elif self.path == "/to-ftp.png":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/to-green.png":
            self.send_response(301)
            self.send_header("Location", "/green.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/declared.png":
            self._send(b"\0" * (2 * 2**20), "image/png")
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg"))


def test_fetch_image(server):
    image = fetch_image(f"{server}/green.png")
    assert image.size == (16, 16) and image.convert("RGB").getpixel((3, 3)) == COLOURS["green"]


@pytest.mark.parametrize("path, message", [
    ("/page.png", "not an image (got an HTML page)"),
    ("/huge.png", "larger than the 1 MiB limit"),
    ("/declared.png", "larger than the 1 MiB limit"),
    ("/missing.png", "HTTP 404"),
    ("/to-ftp.png", "redirected to ftp://127.0.0.1/x.png, which is not an http(s) URL"),
])
def test_fetch_refuses_with_one_sentence(server, path, message):
    with pytest.raises(GraftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch_image(server + path, timeout=5, max_bytes=2**20)


def test_fetch_follows_http_redirects(server):
    assert fetch_image(f"{server}/to-green.png").size == (16, 16)


def test_fetch_times_out(server):
    start = time.monotonic()
    with pytest.raises(GraftError, match=r"no complete answer within 0.5 s"):
        fetch_bytes(f"{server}/slow.png", timeout=TIMEOUT)
    assert time.monotonic() - start < SLEEP


def test_fetch_refuses_other_schemes():
    with pytest.raises(GraftError, match="only http"):
        fetch_bytes("file:///etc/passwd")


def test_cli_predict_urls_good_and_bad(capsys, server, pkg):
    code, out, err = run_cli(capsys, "predict", pkg, f"{server}/green.png", f"{server}/slow.png",
                             f"{server}/page.png", f"{server}/huge.png", "--top-k", "2", "--json",
                             "--timeout", TIMEOUT, "--max-mb", "1")
    assert code == 2
    results = json.loads(out)
    assert results[0]["predictions"][0]["class"] == "green"
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("graft: error: http://127.0.0.1:") for line in lines)
    assert "within 0.5 s" in lines[0] and "not an image" in lines[1] and "1 MiB limit" in lines[2]
