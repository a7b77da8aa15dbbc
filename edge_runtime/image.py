"""Decoding and resizing photos: the one definition shared by training, calibration and the device.

Every stage (feature caching, fine-tuning, int8 calibration, verification, edge-predict) turns a
file or a camera frame into model input through these functions, so the pixels a model is
verified on are the pixels it sees on the device. Only numpy and Pillow are used.
"""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import UserError

# A truncated file must fail loudly rather than decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Decompression-bomb guard: 100 megapixels is above any phone camera in common use; a file that
# claims more is refused before its pixels are decoded.
MAX_PIXELS = 100_000_000
# The resize a run records (config -> manifest) and every later stage repeats; all are Pillow's
# own kernels, so the pixels follow the Pillow pinned in constraints.txt. The default, bilinear,
# is antialiased when shrinking and the most faithful. For devices where the frame resize is a
# visible share of the latency: "reduce-nearest" box-averages by whole factors (Pillow's reduce)
# and then takes the nearest pixel, about a third of bilinear's cost on a 640x480 frame;
# "nearest" alone costs about a tenth, with more aliasing.
RESIZE_METHOD = "bilinear"
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}
REDUCE_NEAREST = "reduce-nearest"
RESIZE_METHODS = (*_FILTERS, REDUCE_NEAREST)

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class ImageError(UserError, ValueError):
    """An image that cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path, reason: str, kind: str = "unusable"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind   # unusable | not_an_image | too_many_pixels: lets a server pick its status
        super().__init__(f"{path}: {reason}")


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: Union[str, os.PathLike, bytes], max_pixels: int = MAX_PIXELS,
               draft_size: int | None = None, name: str = "<upload>") -> Image.Image:
    """Open and fully decode an image file (or an encoded image's bytes, called ``name`` in
    messages) as 8-bit RGB, or raise ImageError saying why not.

    Handles zero-byte, non-image, truncated and oversized files; EXIF orientation; and the modes
    that real folders contain (grayscale, palette, RGBA, CMYK, 16-bit). ``draft_size`` lets JPEG
    decoding scale down by 1/2, 1/4 or 1/8 in the DCT while staying at least that large.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        p, src = name, io.BytesIO(path)
        if not len(path):
            raise ImageError(p, "empty (0 bytes); send the photo's bytes")
    else:
        p = src = Path(path)
        try:
            if p.stat().st_size == 0:
                raise ImageError(p, "empty file (0 bytes); delete it or replace it with the photo")
        except FileNotFoundError:
            raise ImageError(p, "no such file") from None
    try:
        img = Image.open(src)
    except UnidentifiedImageError:
        fix = "send a JPEG, PNG, BMP, GIF, WebP or TIFF file" if p == name else "remove it from the data folder"
        raise ImageError(p, f"not an image (unrecognised format); {fix}", "not_an_image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(p, f"refused, too many pixels (decompression-bomb guard): {e}", "too_many_pixels") from None
    except OSError as e:
        raise ImageError(p, f"cannot be opened: {e}") from None
    except Exception as e:   # noqa: BLE001 - Pillow's header parsers raise ValueError (e.g. a PNG text chunk that
        # inflates past MAX_TEXT_CHUNK), SyntaxError, struct.error... for damaged or hostile files
        raise ImageError(p, f"damaged or hostile image header ({e}); re-export or remove it") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageError(p, f"refused, {w}x{h} pixels is over the {max_pixels:,}-pixel limit "
                            "(decompression-bomb guard); downscale the file", "too_many_pixels")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for broken data
        raise ImageError(p, f"truncated or corrupt image data ({e}); re-export or remove it") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> upright 8-bit RGB. Transparent pixels are composited on white."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the photo
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize(img: Image.Image | np.ndarray, size: int | tuple[int, int], method: str = RESIZE_METHOD,
           workers: int = 1) -> np.ndarray:
    """RGB image (PIL, or an HxWx3 uint8 array) -> uint8 array (H, W, 3) at the model's input size
    (whole frame, no crop).

    ``workers`` > 1 resizes horizontal bands of a large image on that many threads (Pillow releases
    the GIL); the bands join into exactly the one-pass result (see ``_banded_resize``).
    """
    w, h = (size, size) if isinstance(size, int) else size
    check_resize_method(method)
    src = (img.shape[1], img.shape[0]) if isinstance(img, np.ndarray) else img.size
    if src == (w, h):
        return np.asarray(img, dtype=np.uint8)
    if method == REDUCE_NEAREST:
        return _reduce_nearest(img, src, (w, h), _bands(src, (w, h), workers))
    if method == "nearest":  # the same row gathering, no averaging; too cheap to be worth threads
        return _reduce_nearest(img, src, (w, h), 1, reduce=False)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    parts = _bands(src, (w, h), workers)
    if parts > 1 and _banding_is_exact(src, (w, h), method, parts):
        return _banded_resize(img, (w, h), method, parts)
    return np.asarray(img.resize((w, h), _FILTERS[method]), dtype=np.uint8)


def check_resize_method(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise UserError(f"resize method {method!r} is unknown to this edge runtime (it knows "
                        f"{', '.join(RESIZE_METHODS)}); upgrade edgetl on this device")
    return method


@lru_cache(maxsize=64)
def _pillow_nearest_rows(n_in: int, n_out: int) -> np.ndarray:
    """The source row Pillow's NEAREST takes for each output row (read off a ramp image: Pillow
    steps through float coordinates, so ties are settled its way, not by a formula)."""
    ramp = Image.fromarray(np.arange(n_in, dtype=np.int32)[:, None], "I")
    rows = np.asarray(ramp.resize((1, n_out), Image.Resampling.NEAREST))[:, 0].astype(np.intp)
    rows.setflags(write=False)
    return rows


def _reduce_nearest(img: Image.Image | np.ndarray, src: tuple[int, int], size: tuple[int, int],
                    parts: int = 1, reduce: bool = True) -> np.ndarray:
    """Pillow's reduce by the largest whole factor per axis that keeps the image at least ``size``
    (box averages; a partial last block averages the pixels it has), then Pillow's NEAREST: the
    averaging spares most of plain nearest's aliasing, at a third of bilinear's cost.

    Each output row comes from one row of blocks, so each band gathers just the source rows of
    its blocks (a partial bottom block stays partial, at the end of the gathered rows), reduces
    them and keeps Pillow's columns: ``parts`` bands on threads give exactly the one-pass pixels,
    and a numpy frame is never copied whole into Pillow. ``reduce=False`` is plain NEAREST, for
    which that saves copying the rows it skips.
    """
    (W, H), (w, h) = src, size
    x = np.asarray(img, dtype=np.uint8)
    fx, fy = (max(1, W // w), max(1, H // h)) if reduce else (1, 1)
    ys = _pillow_nearest_rows(-(-H // fy), h)               # block row of each output row, in order
    rows = [h * i // parts for i in range(parts + 1)]

    def band(i):
        blocks = ys[rows[i]:rows[i + 1]]
        src_rows = (blocks[:, None] * fy + np.arange(fy)).ravel()
        part = Image.fromarray(x.take(src_rows[src_rows < H], axis=0))
        if fx > 1 or fy > 1:
            part = part.reduce((fx, fy))
        return np.asarray(part.resize((w, len(blocks)), Image.Resampling.NEAREST))  # rows stay 1:1

    return band(0) if parts == 1 else _join_bands(band, rows, w)


# Below this many source pixels a thread hand-off costs more than it saves.
_MIN_SPLIT_PIXELS = 150_000
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="edgetl-resize")
    return _pool


def _bands(src: tuple[int, int], dst: tuple[int, int], workers: int) -> int:
    if workers < 2 or src[0] * src[1] < _MIN_SPLIT_PIXELS:
        return 1
    return 4 if workers >= 4 and dst[1] >= 8 else 2 if dst[1] >= 2 else 1


def _banded_resize(img: Image.Image, size: tuple[int, int], method: str, parts: int) -> np.ndarray:
    """Each band is resized from the full source (``box`` keeps the filter's support reaching
    across band edges), so the bands join into exactly the one-pass result."""
    (W, H), (w, h) = img.size, size
    rows = [h * i // parts for i in range(parts + 1)]

    def band(i):
        return np.asarray(img.resize((w, rows[i + 1] - rows[i]), _FILTERS[method],
                                     box=(0, rows[i] * H / h, W, rows[i + 1] * H / h)))

    return _join_bands(band, rows, w)


def _join_bands(band, rows: list[int], w: int) -> np.ndarray:
    """Run ``band(i)`` for each band of output ``rows`` on the pool (the calling thread takes the
    first) and stack the results."""
    futures = [_get_pool().submit(band, i) for i in range(1, len(rows) - 1)]
    out = np.empty((rows[-1], w, 3), np.uint8)
    out[rows[0]:rows[1]] = band(0)
    for i, f in enumerate(futures, start=1):
        out[rows[i]:rows[i + 1]] = f.result()
    return out


@lru_cache(maxsize=64)
def _banding_is_exact(src: tuple[int, int], dst: tuple[int, int], method: str, parts: int) -> bool:
    """Band coordinates are floats; for some geometries a rounding step shifts a filter weight.
    The weights depend on geometry only, so one check on noise settles a geometry for good."""
    rng = np.random.default_rng(src[0] * 7919 + src[1])
    noise = Image.fromarray(rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8))
    one_pass = np.asarray(noise.resize(dst, _FILTERS[method]))
    return bool(np.array_equal(_banded_resize(noise, dst, method, parts), one_pass))


def load_image(image: ImageInput, size: int | tuple[int, int], method: str = RESIZE_METHOD,
               draft: bool = False, workers: int = 1) -> np.ndarray:
    """A path, encoded image bytes, PIL image or HxWx3 uint8 RGB frame -> model-sized uint8 RGB
    array.

    ``workers``: threads for resizing a large image (same pixels either way, see ``resize``)."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ImageError("<frame>", f"expected an HxWx3 RGB array, got shape {image.shape}")
        frame = np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)
        return resize(frame, size, method, workers)
    if isinstance(image, Image.Image):
        return resize(to_rgb(image), size, method, workers)
    target = size if isinstance(size, int) else max(size)
    return resize(open_image(image, draft_size=target if draft else None), size, method, workers)


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
