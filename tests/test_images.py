"""Safe image decoding and tensor transforms, on tiny files written into tmp_path."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    image_to_tensor,
    image_to_uint8,
    load_image,
    normalize,
)
from polymodal.errors import DataError


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no pixel data: only the header can be read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise(width: int = 48, height: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_valid_files_load_as_plain_rgb(tmp_path, fmt):
    path = write(tmp_path / f"ok.{fmt.lower()}", encode(noise(), fmt))
    img = load_image(path)
    assert (img.mode, img.size, img.info) == ("RGB", (48, 32), {})
    assert load_image(str(path)).size == load_image(path.read_bytes()).size == (48, 32)
    if fmt == "PNG":  # lossless: exact pixels
        assert np.array_equal(np.asarray(img), np.asarray(noise()))


def test_exif_orientation_is_applied_then_metadata_dropped(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = write(tmp_path / "rotated.jpg", encode(Image.new("RGB", (40, 20), "green"), "JPEG", exif=exif.tobytes()))
    img = load_image(path)
    assert img.size == (20, 40)
    assert img.info == {} and len(img.getexif()) == 0


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    img = load_image(write(tmp_path / "pal.png", encode(pal, "PNG", transparency=0)))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 0, 255)  # opaque palette entry kept
    assert img.getpixel((2, 2)) == (255, 255, 255)  # transparent entry -> white background


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [("RGBA", (255, 0, 0, 128), (255, 127, 127)), ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
     ("LA", (0, 0), (255, 255, 255)), ("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77))],
)
def test_alpha_and_grey_modes_convert_to_rgb(mode, color, expected):
    img = load_image(encode(Image.new(mode, (3, 3), color), "PNG"))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == expected


def test_cmyk_converts_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    img = load_image(write(tmp_path / "cmyk.jpg", encode(cmyk, "JPEG", quality=95)))
    r, g, b = img.getpixel((4, 4))
    assert img.mode == "RGB" and r > 240 and g < 15 and b < 15


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    img = load_image(write(tmp_path / "deep.png", encode(source, "PNG")))
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 128, 255]


def test_float_and_32_bit_images_are_scaled():
    floats = load_image(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    assert [floats.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = load_image(Image.fromarray(np.array([[-10, 90]], dtype=np.int32)))  # outside 0..65535: min-max
    assert [wide.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "lime")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_image(data).getpixel((1, 1)) == (255, 0, 0)


def test_caller_image_is_not_modified():
    source = Image.new("RGB", (4, 4), "blue")
    source.info["comment"] = "keep me"
    out = load_image(source)
    assert out is not source and out.info == {} and source.info == {"comment": "keep me"}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise_data_error_naming_the_file(tmp_path, fmt):
    data = encode(noise(64, 64), fmt)
    path = write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.(png|jpeg): truncated or corrupt image"):
        load_image(path)


def test_empty_missing_and_non_image_files(tmp_path):
    with pytest.raises(DataError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_image(write(tmp_path / "empty.jpg", b""))
    with pytest.raises(DataError, match=r"<bytes>: empty image data"):
        load_image(b"")
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    html = write(tmp_path / "page.png", b"<html><body>404 Not Found</body></html>\n")
    with pytest.raises(DataError) as info:
        load_image(html)
    message = str(info.value)
    assert "page.png: not a readable image (cannot identify image file)" in message
    assert "remove it from the annotations" in message and "\n" not in message


def test_huge_header_is_rejected_before_decoding(tmp_path):
    path = write(tmp_path / "bomb.png", png_header_only(12000, 9000))  # 108 MP claimed, no pixel data
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert "bomb.png" in message and "12000x9000" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message and "max_pixels" in message
    # with a larger limit the header passes and decoding (of no data) is what fails
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_image(path, max_pixels=200_000_000)


def test_pixel_limit_is_adjustable():
    data = encode(noise(100, 50), "PNG")
    with pytest.raises(DataError, match="over the limit of 4,999"):
        load_image(data, max_pixels=4999, name="small.png")
    assert load_image(data, max_pixels=5000).size == (100, 50)


def test_pil_hard_limit_becomes_data_error():
    with pytest.raises(DataError, match=r"giant\.png: image has 200,000,000 pixels, over PIL's hard limit"):
        load_image(png_header_only(20000, 10000), max_pixels=10**9, name="giant.png")


def test_image_to_uint8_resizes_shorter_side_and_center_crops():
    wide = Image.new("RGB", (60, 20), "red")
    wide.paste((0, 255, 0), (20, 0, 40, 20))  # the centre square is green
    out = image_to_uint8(wide, 10)
    assert out.dtype == torch.uint8 and out.shape == (3, 10, 10)
    assert out[:, 2:8, 2:8].tolist() == torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 6).tolist()
    tall = image_to_uint8(Image.new("RGB", (20, 50), (10, 20, 30)), 7)
    assert tall.shape == (3, 7, 7) and tall[:, 3, 3].tolist() == [10, 20, 30]


def test_image_to_tensor_normalizes_with_imagenet_stats():
    color = (200, 100, 50)
    x = image_to_tensor(Image.new("RGB", (32, 24), color), 16)
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    expected = [(c / 255 - m) / s for c, m, s in zip(color, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x[:, 8, 8], torch.tensor(expected), atol=1e-5)
    assert image_to_tensor(Image.new("L", (8, 8), 255), 4).shape == (3, 4, 4)  # non-RGB goes through load_image


def test_normalize_batches_and_denormalize_round_trip():
    batch = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    x = normalize(batch)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32
    assert torch.allclose(x[1], normalize(batch[1]))
    assert torch.allclose(denormalize(x), batch.float() / 255, atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0
