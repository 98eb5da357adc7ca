"""Turn any image file into JPEG bytes that every backend decodes the same way, or reject it.

Baseline and progressive RGB or grayscale JPEGs pass through byte for byte. Everything else (PNG,
CMYK, palette, alpha, 16-bit, an EXIF rotation that PIL would not apply but DALI would) is decoded
and re-encoded as RGB JPEG. Every image is decoded once here, because DALI cannot skip an
undecodable image later: it stops the whole pipeline.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

EXIF_ORIENTATION = 0x0112


class BadImage(InputError):
    """An image that cannot be decoded; the message says what is wrong with it."""


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    width: int
    height: int
    reencoded: str | None  # why it was re-encoded, or None when the original bytes were kept


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("empty file")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # its own message names only an in-memory buffer
        raise BadImage("not a JPEG or any image format Pillow knows") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"not a readable image ({e})") from None


def _decode_check(im: Image.Image) -> None:
    """Decode every byte of the entropy-coded data; a reduced-size (DCT-scaled) decode is enough for that."""
    try:
        im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot be decoded ({e})") from None


def _check_structure(data: bytes) -> None:
    """Walk the JPEG markers: SOI, well-formed segments up to the scan, and an EOI after it.

    Catches truncated, empty and non-JPEG files without decoding pixels. Inside entropy-coded data
    0xFF is always followed by 0x00 or a restart marker, so an 0xFFD9 after the scan start is the EOI.
    """
    if data[:2] != b"\xff\xd8":
        raise BadImage("not a JPEG (no start-of-image marker)")
    pos, seen_frame = 2, False
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise BadImage(f"broken JPEG marker structure at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            raise BadImage(f"truncated JPEG segment 0x{marker:02X} at byte {pos}")
        if marker in (0xC0, 0xC1, 0xC2):
            seen_frame = True
        if marker == 0xDA:
            break
        pos += 2 + length
    if not seen_frame:
        raise BadImage("JPEG has no baseline or progressive frame header")
    if data.rfind(b"\xff\xd9") < pos:
        raise BadImage("truncated JPEG (no end-of-image marker after the scan)")


def _reencode_reason(im: Image.Image, max_side: int | None) -> str | None:
    if im.format != "JPEG":
        return f"format {im.format}"
    if im.mode not in ("RGB", "L"):
        return f"mode {im.mode}"
    if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return "exif orientation"
    if max_side and max(im.size) > max_side:
        return "max side"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode == "I;16" or im.mode == "I":
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")


def prepare_image(
    data: bytes, max_side: int | None = None, quality: int = 95, check: str = "decode"
) -> PreparedImage:
    """JPEG bytes for a shard: the original when it is a plain RGB/gray JPEG, else an RGB re-encode.

    `check="decode"` decodes every passthrough JPEG (what DALI needs to be safe); `"structure"` only
    walks its markers, several times faster, for data you trust.
    """
    im = _open(data)
    reason = _reencode_reason(im, max_side)
    if reason is None:
        width, height = im.size  # before the check: a draft decode shrinks im.size
        _check_structure(data) if check == "structure" else _decode_check(im)
        return PreparedImage(data, width, height, None)
    try:
        if max_side and max(im.size) > max_side:
            im.draft("RGB", (max_side, max_side))  # DCT-domain downscale first: much cheaper to decode
        im.load()
        rgb = _to_rgb(im)
        if max_side and max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot be decoded ({e})") from None
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return PreparedImage(out.getvalue(), rgb.size[0], rgb.size[1], reason)
