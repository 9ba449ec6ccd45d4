"""Fetch an image from an http(s) URL: bounded in time and size, checked to be an image.

A URL is untrusted input: we read at most `max_bytes` (never the whole body of a
huge response), stop after `timeout` seconds in total (a server that drips bytes
cannot hold us), and accept the bytes only if Pillow decodes them as an image.
"""
from __future__ import annotations

import io
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from ..errors import GraftError

DEFAULT_TIMEOUT = 10.0           # seconds, for the whole download
DEFAULT_MAX_BYTES = 20 * 2**20   # 20 MiB: larger than any photo worth classifying
_CHUNK = 64 * 1024


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): urllib would also follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise GraftError(f"{req.full_url}: redirected to {newurl}, which is not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def is_url(ref: str) -> bool:
    return urlparse(str(ref)).scheme in ("http", "https")


def fetch_bytes(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of `url`, or a GraftError saying why not (timeout, HTTP error, too large)."""
    if not is_url(url):
        raise GraftError(f"{url}: only http:// and https:// URLs can be fetched")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "graftkit", "Accept": "image/*"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _too_large(url, max_bytes)
            body = bytearray()
            while chunk := response.read(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(url, max_bytes)
                if time.monotonic() > deadline:
                    raise _timed_out(url, timeout)
            return bytes(body)
    except urllib.error.HTTPError as e:
        raise GraftError(f"{url}: the server answered HTTP {e.code} {e.reason}", "check the URL") from None
    except (socket.timeout, TimeoutError):
        raise _timed_out(url, timeout) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _timed_out(url, timeout) from None
        raise GraftError(f"{url}: cannot connect ({e.reason})", "check the URL and the network") from None
    except OSError as e:
        raise GraftError(f"{url}: the download failed ({e})", "try again or download the file yourself") from None


def fetch_image(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """The decoded image at `url` (fully loaded, so no file handle stays open)."""
    data = fetch_bytes(url, timeout=timeout, max_bytes=max_bytes)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise not_an_image(url, data) from None
    return image


def not_an_image(url: str, data: bytes) -> GraftError:
    head = data[:256].lstrip().lower()
    what = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else f"{len(data)} bytes"
    return GraftError(f"{url}: not an image (got {what})", "give the URL of the image file itself")


def _too_large(url: str, max_bytes: int) -> GraftError:
    return GraftError(f"{url}: larger than the {max_bytes / 2**20:.0f} MiB limit",
                      "download it yourself and pass the file, or raise --max-mb")


def _timed_out(url: str, timeout: float) -> GraftError:
    return GraftError(f"{url}: no complete answer within {timeout:g} s", "check the URL or raise --timeout")
