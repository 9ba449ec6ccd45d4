"""Image bytes -> uint8 pixels, fast and predictable.

- JPEG: when the wanted size is much smaller than the image, Pillow's `Image.draft`
  asks libjpeg to decode at 1/2, 1/4 or 1/8 scale in the DCT domain, which skips
  most of the decoding work (the image is never made smaller than `min_side`).
- EXIF orientation is applied, so a photo taken sideways comes out upright.
- Modes are converted once, the same way everywhere: CMYK/YCbCr/palette/16-bit/
  grayscale -> RGB (or L), transparency composited onto white (not dropped to
  black), and only the first frame of an animated GIF/WebP is used.

Everything returns numpy uint8 HxWxC arrays (C = 3 or 1); float conversion and
normalisation happen at the very end of the pipeline (see transforms.py).
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import GraftError

Image.MAX_IMAGE_PIXELS = 200_000_000  # refuse decompression bombs beyond ~200 Mpx
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently gray pixels


class DecodeError(GraftError):
    """An image that cannot be decoded (corrupt, truncated, not an image); `reason` is the short why."""

    def __init__(self, message: str, hint: str | None = None, reason: str | None = None):
        super().__init__(message, hint)
        self.reason = reason or message


def failure_reason(e: Exception) -> str:
    text = str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not a recognisable image (corrupt, or a format Pillow cannot read)"
    if "truncated" in text.lower() or isinstance(e, EOFError):
        return f"truncated: the image data ends early ({text})"
    return f"corrupt image data ({type(e).__name__}: {text})"


def _open(src) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(src))
    return Image.open(src)


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any Pillow image to RGB or L; alpha is composited onto white, 16-bit scaled to 8-bit."""
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        a = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        img = Image.fromarray((a >> 8 if a.max() > 255 else a).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert(mode)


def decode(src, min_side: int | None = None, mode: str = "RGB", exif: bool = True) -> np.ndarray:
    """Decode `src` (bytes or a path) to an HxWxC uint8 array.

    min_side: the smallest shorter side the caller needs; JPEGs are DCT-downscaled
    (1/2..1/8) as far as that allows. Raises DecodeError for anything unreadable.
    """
    try:
        with _open(src) as img:
            if min_side and img.format == "JPEG":
                w, h = img.size
                scale = min(w, h) / float(min_side)
                if scale >= 2:
                    img.draft(img.mode if img.mode in ("RGB", "L") else None,
                              (max(1, int(w / scale)), max(1, int(h / scale))))
            if exif and img.format in ("JPEG", "TIFF", "WEBP", "PNG", "MPO") and _has_orientation(img):
                img = ImageOps.exif_transpose(img)
            img = to_mode(img, mode)
            a = np.asarray(img)
    except GraftError:
        raise
    except Exception as e:  # Pillow raises many types for bad data: all mean "not decodable"
        where = src if isinstance(src, (str, os.PathLike)) else f"{len(src)}-byte image"
        reason = failure_reason(e)
        raise DecodeError(f"{where}: {reason}", "re-export the file or remove it from the list", reason) from None
    if a.ndim == 2:
        a = a[:, :, None]
    return a


def decode_tensor(src, min_side: int | None = None, mode: str = "RGB") -> torch.Tensor:
    """Like decode, as a uint8 CHW tensor (a view of HWC memory, which the resize kernels prefer).

    RGB/gray JPEGs that need no DCT downscaling go to torchvision's libjpeg-turbo
    decoder (faster than Pillow's, no Image object; it applies EXIF orientation too);
    the rest (CMYK, downscaled, other formats), and anything it rejects, to Pillow.
    """
    if isinstance(src, (bytes, bytearray, memoryview)) and src[:3] == b"\xff\xd8\xff":
        head = jpeg_header(src)
        if head is not None and head[0] * head[1] > Image.MAX_IMAGE_PIXELS:  # torchvision has no such check
            raise DecodeError(f"a JPEG of {head[1]}x{head[0]} pixels is over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit "
                              "(a decompression bomb?)", "remove it from the data, or resize it first",
                              "over the pixel limit")
        simple = (head is not None and head[2] in (1, 3)
                  and not (min_side and min(head[0], head[1]) >= 2 * min_side))
        if simple:
            try:
                data = torch.frombuffer(bytearray(src) if isinstance(src, bytes) else src, dtype=torch.uint8)
                return tvio.decode_jpeg(data, mode=tvio.ImageReadMode.GRAY if mode == "L" else tvio.ImageReadMode.RGB,
                                        apply_exif_orientation=head[3])
            except Exception:
                pass  # Pillow gives the reason, or manages where libjpeg's strict mode did not
    array = decode(src, min_side, mode)
    if not array.flags.writeable:  # Pillow's buffer is read-only; tensors must own writable memory
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header(data) -> tuple[int, int, int, bool] | None:
    """(height, width, components, has_exif) from a JPEG's markers, or None if they cannot be walked.

    A few microseconds instead of an Image.open; has_exif means "ask Pillow about the orientation"."""
    pos, n, exif = 2, len(data), False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            if pos + 10 > n:
                return None
            h = (data[pos + 5] << 8) | data[pos + 6]
            w = (data[pos + 7] << 8) | data[pos + 8]
            return h, w, data[pos + 9], exif
        if marker == 0xE1 and bytes(data[pos + 4:pos + 10]) == b"Exif\0\0":
            exif = True
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def _has_orientation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (1, 0, None)
    except Exception:
        return False


def probe(path_or_bytes) -> dict:
    """What a file is, without decoding the pixels: format, size, mode, frames, EXIF orientation."""
    try:
        with _open(path_or_bytes) as img:
            info = {"format": img.format, "size": img.size, "mode": img.mode,
                    "frames": getattr(img, "n_frames", 1), "orientation": 1}
            try:
                info["orientation"] = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:
                pass
            info["transparency"] = "transparency" in img.info
    except GraftError:
        raise
    except Exception as e:  # Pillow raises many types for bad data (as in decode): all mean "not an image"
        where = path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike)) else f"{len(path_or_bytes)}-byte image"
        reason = failure_reason(e)
        raise DecodeError(f"{where}: {reason}", "re-export the file or remove it from the list", reason) from None
    return info
