"""The one image loader used everywhere: safe decode to plain RGB, then fixed-size tensors.

`load_image` turns a file, bytes or a PIL image into a fully decoded, metadata-free RGB image,
or raises one `DataError` line that names the file and says what to do. It checks the pixel count
from the header before decoding (decompression bombs), decodes eagerly (truncated files fail here,
not later inside a DataLoader worker), applies the EXIF orientation and converts every mode to RGB:

- alpha (RGBA, LA, PA, P with transparency, RGB/L with a transparent colour) is composited over
  white (`BACKGROUND`), because transparent images (logos, product shots, icons) are drawn on white
  backgrounds where people see and caption them;
- 16-bit integer images (I;16*, and I with values in 0..65535) are scaled by 255/65535, not clipped;
  `I` images with values outside 0..65535 and float (`F`) images outside [0, 1] are min-max scaled;
- CMYK, YCbCr, 1, L and the rest go through PIL's own conversion; animated images give frame 0.

`image_to_uint8` and `image_to_tensor` resize the shorter side to `size` (bicubic, antialiased) and
take the centre square. Datasets can cache the compact uint8 tensors and `normalize` per batch.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, InputError

DEFAULT_MAX_PIXELS = 50_000_000  # ~ 7000 x 7000; 4x the largest COCO/Flickr image, 150 MB as RGB
BACKGROUND = (255, 255, 255)  # what transparent pixels become (see the module docstring)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = str | Path | bytes | Image.Image

# What PIL raises on broken data depends on the format plugin; all of these mean "corrupt file".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open, check, fully decode and normalise an image to a fresh RGB image without metadata.

    Args:
        source: a path, the encoded bytes of an image file, or an already opened PIL image.
        max_pixels: largest width * height accepted; checked from the header before decoding.
        name: what error messages call the image (default: the path, or "<bytes>" / "<image>").

    Returns:
        A new `PIL.Image.Image` in mode RGB, EXIF orientation applied, with empty `info`.

    Raises:
        DataError: missing, empty, unreadable, truncated or too large image (one line naming it).

    Example:
        >>> img = load_image(Image.new("LA", (4, 2)))  # or a path, or the bytes of a file
        >>> img.mode, img.size, img.info, img.getpixel((0, 0))
        ('RGB', (4, 2), {}, (255, 255, 255))
    """
    if isinstance(source, Image.Image):
        name = name or "<image>"
        _check_pixels(source.size, max_pixels, name)
        return _to_plain_rgb(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        name = name or "<bytes>"
        if len(source) == 0:
            raise DataError(f"{name}: empty image data (0 bytes); send or store the actual image file")
        return _decode(io.BytesIO(bytes(source)), max_pixels, name)
    path = Path(source)
    name = name or str(path)
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "image file not found"
        raise DataError(f"{name}: {what}; check the path or remove it from the annotations")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: empty file (0 bytes); re-download the image or remove it from the annotations")
    return _decode(path, max_pixels, name)


def _decode(fp: Path | io.BytesIO, max_pixels: int, name: str) -> Image.Image:
    """Open from a path or buffer, check the header size, decode frame 0 and convert it."""
    fix = "check the file or remove it from the annotations"
    with warnings.catch_warnings():
        # PIL warns above its own global limit; we enforce `max_pixels` ourselves right after open.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as img:
                _check_pixels(img.size, max_pixels, name)
                img.seek(0)  # animated GIF/WebP/APNG/TIFF: the first frame
                img.load()
                return _to_plain_rgb(img, name)
        except Image.DecompressionBombError as e:
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
            raise DataError(
                f"{name}: image has {size}, over PIL's hard limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,}; "
                "resize the image, or raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels if you trust it"
            ) from e
        except UnidentifiedImageError as e:
            raise DataError(f"{name}: not a readable image (cannot identify image file); {fix}") from e
        except _DECODE_ERRORS as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{name}: truncated or corrupt image ({reason}); {fix}") from e


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise DataError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels); resize it, or pass a larger max_pixels if you trust the file"
        )


def _to_plain_rgb(img: Image.Image, name: str) -> Image.Image:
    """EXIF-rotate and convert to RGB in a new image whose info/exif/palette are all gone."""
    original = img
    try:
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        pass  # a corrupt EXIF block is not worth rejecting a good image for; keep it unrotated
    rgb = _convert_to_rgb(img, name)
    out = rgb.copy() if rgb is original else rgb  # never hand back (or later mutate) the caller's image
    out.info = {}
    if len(out.getexif()):
        # exif_transpose keeps every tag but the orientation (GPS included) outside `info`, where
        # `img.save(..., exif=img.getexif())` would write it back: rebuild from the pixels alone.
        out = Image.frombytes("RGB", out.size, out.tobytes())
    return out


def _convert_to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(img)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except _DECODE_ERRORS as e:
        raise DataError(f"{name}: unsupported image mode {mode!r} ({e}); convert it to RGB (e.g. PNG or JPEG)") from e


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float grey images to 8 bits by scaling, never clipping."""
    values = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = values * (255.0 / 65535.0)
    elif img.mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
        scaled = values * (255.0 / 65535.0)  # 16-bit data that PIL widened to 32 bits
    elif img.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
        scaled = values * 255.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def image_to_uint8(img: ImageSource, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic, antialiased) and centre-crop to a square.

    Resizing and cropping happen in one PIL resample over the centre square of the source, so the
    discarded borders are never resized. Anything that is not already an RGB PIL image goes
    through `load_image` first.

    Args:
        img: an RGB PIL image (or anything `load_image` accepts).
        size: output height and width in pixels.

    Returns:
        A `torch.uint8` tensor of shape (3, size, size).

    Example:
        >>> image_to_uint8(Image.new("RGB", (64, 32), (255, 0, 0)), 16)[:, 0, 0].tolist()
        [255, 0, 0]
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not (isinstance(img, Image.Image) and img.mode == "RGB"):
        img = load_image(img)
    width, height = img.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    square = img.resize((size, size), Image.Resampling.BICUBIC, box=box)  # PIL resampling is antialiased
    return torch.from_numpy(np.array(square, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (or floats in [0, 1]) into ImageNet-normalised float32.

    Args:
        images: (3, H, W) or (B, 3, H, W); uint8 in 0..255, or floating point in [0, 1].

    Returns:
        float32 tensor of the same shape, on the same device: (x / 255 - mean) / std.

    Example:
        >>> normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8)).flatten().tolist()  # doctest: +ELLIPSIS
        [2.24..., 2.42..., 2.64...]
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo `normalize` for display: (3, H, W) or (B, 3, H, W) float, clamped to [0, 1].

    Example:
        >>> x = torch.rand(3, 2, 2)
        >>> torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
        True
    """
    x = images.float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def image_to_tensor(img: ImageSource, size: int) -> torch.Tensor:
    """Resize + centre-crop like `image_to_uint8`, then scale to [0, 1] and ImageNet-normalise.

    Args:
        img: an RGB PIL image (or anything `load_image` accepts).
        size: output height and width in pixels.

    Returns:
        A float32 tensor of shape (3, size, size).

    Example:
        >>> image_to_tensor(Image.new("RGB", (40, 30)), 8).shape
        torch.Size([3, 8, 8])
    """
    return normalize(image_to_uint8(img, size))


def images_to_batch(images: ImageSource | torch.Tensor | list | tuple, size: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Paths, bytes, PIL images or normalised (3, H, W) tensors -> one normalised batch (B, 3, size, size).

    The one preprocessing path of every model's user API (captioners, VQA, chat, dual encoders).

    Example:
        >>> images_to_batch([Image.new("RGB", (40, 30)), torch.zeros(3, 16, 16)], 8).shape
        torch.Size([2, 3, 8, 8])
    """
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError("no images given; pass at least one image path, PIL image or tensor")
    tensors = []
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.ndim != 3 or item.shape[0] != 3:
                raise InputError(f"image tensor must be (3, H, W) and normalized, got {tuple(item.shape)}")
            tensors.append(F.interpolate(item[None].float(), size=(size, size), mode="bilinear",
                                         antialias=True, align_corners=False)[0])
        else:
            tensors.append(image_to_tensor(load_image(item), size))
    return torch.stack(tensors).to(device)
