"""Image cases: truncated files, empty files, header bombs, odd modes, animation, EXIF, impostors.

Every image case runs twice: from a path through `data.images.load_image` (datasets, the CLI) and
from bytes through `serve.uploads.decode_image` (the server), which must answer with a
`RequestError` carrying an HTTP status instead of a `DataError`.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polymodal.data.images import load_image
from polymodal.errors import DataError
from polymodal.serve.uploads import Limits, RequestError, decode_image

from .cases import Case

W, H = 40, 24
QUADRANTS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (240, 220, 30)]  # TL, TR, BL, BR
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
GPS = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # a home address, in effect


def quadrants() -> Image.Image:
    """An image whose four quadrants differ, so every flip and rotation is visible."""
    img = Image.new("RGB", (W, H))
    for i, colour in enumerate(QUADRANTS):
        x, y = (i % 2) * W // 2, (i // 2) * H // 2
        img.paste(colour, (x, y, x + W // 2, y + H // 2))
    return img


def gradient(mode: str = "RGB") -> Image.Image:
    """A smooth, detailed picture (compresses to a realistic multi-kilobyte file)."""
    y, x = np.mgrid[0:96, 0:128]
    noise = np.random.default_rng(0).integers(0, 40, (96, 128, 3))  # so that truncation cuts pixel data
    rgb = (np.stack([x * 2, y * 2, (x + y) % 256], axis=-1) * 0.8 + noise).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encoded(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def with_gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = GPS       # GPSInfo IFD
    return exif


# ----------------------------------------------------------------------------- expectations
def is_plain_rgb(size: tuple[int, int] | None = None) -> Callable[[Any, Any], None]:
    def check(_: Any, img: Image.Image) -> None:
        assert img.mode == "RGB", img.mode
        assert img.info == {}, f"metadata kept: {list(img.info)}"
        assert len(img.getexif()) == 0, "EXIF kept"
        if size is not None:
            assert img.size == size, f"size {img.size}, expected {size}"
    return check


def matches(expected: Image.Image, tolerance: int) -> Callable[[Any, Any], None]:
    """Same size and pixels; lossy formats (tolerance > 0) are compared at the centres of 4x4 cells,
    away from the edges that chroma subsampling blurs."""
    def check(arg: Any, img: Image.Image) -> None:
        is_plain_rgb(expected.size)(arg, img)
        got, want = np.asarray(img, dtype=int), np.asarray(expected.convert("RGB"), dtype=int)
        if tolerance:
            h, w = want.shape[:2]
            rows, cols = [h * (2 * i + 1) // 8 for i in range(4)], [w * (2 * i + 1) // 8 for i in range(4)]
            got, want = got[np.ix_(rows, cols)], want[np.ix_(rows, cols)]
        diff = np.abs(got - want).max()
        assert diff <= tolerance, f"pixels differ by {diff} (> {tolerance})"
    return check


# ----------------------------------------------------------------------------- inputs
def truncations(data: bytes, fractions: tuple[float, ...]) -> dict[str, bytes]:
    return {f"{fmt_fraction(f)}": data[: max(1, int(len(data) * f))] for f in fractions}


def fmt_fraction(f: float) -> str:
    return f"at-{f * 100:g}pct"  # 0.1pct, 99pct


def png_header_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    body = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk + body


def jpeg_header_bomb(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def gif_header_bomb(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x3b"


def bmp_header_bomb(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\x00" * 64


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (W, H), c) for c in QUADRANTS]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", b"not really")
    return buf.getvalue()


IMPOSTORS = {
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "zip": zip_bytes(),
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>',
    "svg-bare": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "gzip": gzip.compress(b"hello"),
    "json": b'{"image": "photo.jpg"}',
    "text": b"just some text, not an image\n",
    "mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64,
    "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "nul": b"\x00" * 512,
    "jpeg-magic-only": b"\xff\xd8\xff",
    "png-magic-only": b"\x89PNG\r\n\x1a\n",
}


def image_inputs() -> list[tuple[str, str, bytes, type | None, Callable[[Any, Any], None] | None]]:
    """(name, file suffix, bytes, expected error or None, success check) for every image input."""
    jpeg, png = encoded(gradient(), "JPEG", quality=90), encoded(gradient(), "PNG")
    out: list[tuple[str, str, bytes, type | None, Callable[[Any, Any], None] | None]] = []
    fractions = (0.001, 0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
    for fmt, data, suffix in (("jpeg", jpeg, ".jpg"), ("png", png, ".png")):
        for label, cut in truncations(data, fractions).items():
            out.append((f"truncated-{fmt}-{label}", suffix, cut, DataError, None))
    for fmt, suffix in (("GIF", ".gif"), ("WEBP", ".webp"), ("BMP", ".bmp"), ("TIFF", ".tif")):
        data = encoded(gradient(), fmt)
        for label, cut in truncations(data, (0.05, 0.5, 0.9)).items():
            out.append((f"truncated-{fmt.lower()}-{label}", suffix, cut, DataError, None))
    out.append(("png-bad-crc", ".png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], DataError, None))
    out.append(("zero-bytes-jpg", ".jpg", b"", DataError, None))
    out.append(("zero-bytes-png", ".png", b"", DataError, None))
    # PNG and BMP headers can claim 100k x 100k; JPEG and GIF store sizes in 16 bits (65535 at most).
    for fmt, bomb, side in (("png", png_header_bomb, 100_000), ("bmp", bmp_header_bomb, 100_000),
                            ("jpeg", jpeg_header_bomb, 65_535), ("gif", gif_header_bomb, 65_535)):
        out.append((f"header-bomb-{fmt}-{side}x{side}", ".img", bomb(side, side), DataError, None))
    for fmt, data in IMPOSTORS.items():
        out.append((f"{fmt}-named-jpg", ".jpg", data, DataError, None))
    out += valid_odd_inputs()
    return out


def valid_odd_inputs() -> list[tuple[str, str, bytes, type | None, Callable[[Any, Any], None] | None]]:
    """Odd but valid images: each decodes to plain RGB, as documented in data/images.py."""
    size = (128, 96)
    grey16 = Image.fromarray((np.arange(128 * 96).reshape(96, 128) * 5).astype(np.uint16))
    palette_alpha = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_alpha.info["transparency"] = 0
    frame0 = Image.new("RGB", (W, H), QUADRANTS[0])
    white = Image.new("RGB", size, (255, 255, 255))
    out: list[tuple[str, str, bytes, type | None, Callable[[Any, Any], None] | None]] = [
        ("cmyk-jpeg", ".jpg", encoded(gradient("CMYK"), "JPEG", quality=95), None, is_plain_rgb(size)),
        ("cmyk-tiff", ".tif", encoded(gradient("CMYK"), "TIFF"), None, matches(gradient("CMYK"), 2)),
        ("16-bit-grey-png", ".png", encoded(grey16, "PNG"), None, is_plain_rgb(size)),
        ("16-bit-grey-tiff", ".tif", encoded(grey16, "TIFF"), None, is_plain_rgb(size)),
        ("palette-with-alpha-png", ".png", encoded(palette_alpha, "PNG", transparency=0), None, is_plain_rgb(size)),
        ("rgba-fully-transparent-png", ".png", encoded(Image.new("RGBA", size, (0, 0, 0, 0)), "PNG"), None,
         matches(white, 0)),
        ("la-png", ".png", encoded(gradient("LA"), "PNG"), None, is_plain_rgb(size)),
        ("1-bit-png", ".png", encoded(gradient("1"), "PNG"), None, is_plain_rgb(size)),
        ("float-tiff", ".tif", encoded(gradient("F"), "TIFF"), None, is_plain_rgb(size)),
        ("ycbcr-jpeg-grey", ".jpg", encoded(gradient("L"), "JPEG"), None, is_plain_rgb(size)),
        ("animated-gif", ".gif", animated("GIF"), None, matches(frame0, 0)),
        ("animated-png", ".png", animated("PNG"), None, matches(frame0, 0)),
        ("animated-webp", ".webp", animated("WEBP"), None, matches(frame0, 40)),
        ("jpeg-with-gps-exif", ".jpg", encoded(quadrants(), "JPEG", exif=with_gps_exif(), quality=95), None,
         matches(quadrants(), 40)),
        ("jpeg-corrupt-exif-block", ".jpg", corrupt_exif_jpeg(), None, is_plain_rgb((W, H))),
        ("one-pixel-png", ".png", encoded(Image.new("RGB", (1, 1)), "PNG"), None, is_plain_rgb((1, 1))),
        ("very-wide-png", ".png", encoded(Image.new("RGB", (4000, 1)), "PNG"), None, is_plain_rgb((4000, 1))),
    ]
    for orientation in range(1, 9):
        expected = quadrants().transpose(TRANSPOSE[orientation]) if orientation > 1 else quadrants()
        for fmt, suffix, tol in (("JPEG", ".jpg", 40), ("PNG", ".png", 0), ("WEBP", ".webp", 40)):
            data = encoded(quadrants(), fmt, exif=with_gps_exif(orientation), **({"quality": 95} if tol else {}))
            out.append((f"exif-orientation-{orientation}-{fmt.lower()}", suffix, data, None, matches(expected, tol)))
    return out


def corrupt_exif_jpeg() -> bytes:
    data = encoded(quadrants(), "JPEG", exif=with_gps_exif(6), quality=95)
    start = data.index(b"Exif\x00\x00") + 6
    return data[:start] + b"XX" + data[start + 2:]  # the TIFF byte-order mark is gone


# ----------------------------------------------------------------------------- cases
def _write(name: str, suffix: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        return path
    return make


def _upload(data: bytes, name: str) -> Callable[[Path], tuple[str, bytes]]:
    return lambda _: (f"upload-{name}", data)


def _decode_upload(arg: tuple[str, bytes]) -> Image.Image:
    name, data = arg
    return decode_image(data, name, Limits())


def image_cases() -> list[Case]:
    cases: list[Case] = []
    for name, suffix, data, expect, check in image_inputs():
        cases.append(Case("images", name, _write(name, suffix, data), load_image, expect, check=check))
        cases.append(Case("uploads", name, _upload(data, name), _decode_upload,
                          RequestError if expect is not None else None, mentions=lambda a: a[0], check=check))
    cases += [
        Case("images", "missing-file", lambda f: f / "nope.jpg", load_image, DataError),
        Case("images", "directory-named-jpg", lambda f: _mkdir(f / "folder.jpg"), load_image, DataError),
        Case("images", "over-max-pixels-argument", _write("big", ".png", encoded(gradient(), "PNG")),
             lambda p: load_image(p, max_pixels=100), DataError, contains="max_pixels"),
    ]
    return cases


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
