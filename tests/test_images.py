"""The shared image loader: real folders contain every kind of file; none may crash a stage."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edge_runtime.errors import UserError
from edge_runtime.image import ImageError, load_image, open_image
from tests.conftest import SAMPLES


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.open(SAMPLES / "daisy.jpg").convert("CMYK").save(p)
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (227, 227)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    gray = np.asarray(Image.open(SAMPLES / "daisy.jpg").convert("L"), dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(gray * 257).save(p)  # full 16-bit range
    assert Image.open(p).mode.startswith("I")
    rgb = np.asarray(open_image(p))
    assert rgb.shape == (227, 227, 3)
    assert np.abs(rgb[..., 0].astype(int) - gray).max() <= 1  # not saturated at 255


def test_rgba_png_composited_on_white(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[:5, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    p = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(p)
    rgb = np.asarray(open_image(p))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[9, 9]) == (255, 255, 255)


def test_grayscale_and_palette_become_rgb(tmp_path):
    for mode in ("L", "P", "1"):
        p = tmp_path / f"{mode}.png"
        Image.open(SAMPLES / "daisy.jpg").convert(mode).save(p)
        assert open_image(p).mode == "RGB"


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.open(SAMPLES / "cat.jpg").resize((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert open_image(p).size == (32, 64)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"just some notes, not a photo\n", "not an image"),
])
def test_unusable_files_raise_image_error_naming_the_file(tmp_path, content, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as e:
        open_image(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg_is_refused(tmp_path):
    data = (SAMPLES / "cat.jpg").read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(p)


def _png_header_only(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(60000, 60000))  # 3.6 gigapixels claimed in ~100 bytes
    with pytest.raises(ImageError, match="decompression-bomb"):
        open_image(p)


def test_numpy_frame_and_file_resize_identically():
    arr = np.asarray(open_image(SAMPLES / "cat.jpg"))
    a = load_image(SAMPLES / "cat.jpg", 96)
    b = load_image(arr, 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


@pytest.mark.parametrize("frame,size", [((480, 640), 224), ((720, 1280), 96), ((479, 641), 128), ((400, 600), 260)])
@pytest.mark.parametrize("workers", [2, 4])
def test_threaded_resize_gives_the_same_pixels(frame, size, workers):
    """A camera frame resized on several threads is bit-identical to the one-pass resize."""
    from edge_runtime.image import _banding_is_exact, _bands

    photo = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize(frame[::-1])
    x = np.asarray(photo)
    parts = _bands(photo.size, (size, size), workers)
    assert parts > 1 and _banding_is_exact(photo.size, (size, size), "bilinear", parts)  # the banded path runs
    np.testing.assert_array_equal(load_image(x, size, workers=workers), load_image(x, size))


def test_resize_falls_back_to_one_pass_where_bands_would_differ(monkeypatch):
    import edge_runtime.image as im

    monkeypatch.setattr(im, "_banding_is_exact", lambda *a: False)
    monkeypatch.setattr(im, "_banded_resize", lambda *a: pytest.fail("banded path used"))
    x = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize((640, 480)))
    assert load_image(x, 224, workers=4).shape == (224, 224, 3)


def test_reduce_nearest_averages_before_it_picks():
    """Pixel-fine detail (a one-pixel checkerboard) comes out as its average grey, where plain
    nearest keeps whichever colour each sample lands on."""
    board = (np.indices((480, 640)).sum(0) % 2 * 255).astype(np.uint8)
    fast, plain = load_image(board, 224, "reduce-nearest"), load_image(board, 224, "nearest")
    assert fast.shape == (224, 224, 3) and abs(fast.mean() - 127.5) <= 1 and fast.std() < 1
    assert plain.std() > 100


def test_reduce_nearest_is_the_same_for_a_frame_and_its_file(tmp_path):
    frame = np.asarray(Image.open(SAMPLES / "cat.jpg").convert("RGB").resize((640, 480)))
    Image.fromarray(frame).save(tmp_path / "frame.png")
    np.testing.assert_array_equal(load_image(frame, 224, "reduce-nearest", workers=2),
                                  load_image(tmp_path / "frame.png", 224, "reduce-nearest"))


@pytest.mark.parametrize("frame,size", [((480, 640), 224), ((720, 1280), 96), ((479, 641), 128), ((400, 600), 260),
                                        ((1080, 1920), 224), ((96, 300), 128)])
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("method", ["reduce-nearest", "nearest"])
def test_nearest_methods_are_pillows_whole_image_result_in_any_number_of_bands(frame, size, workers, method):
    """Whatever the threads and whether a frame or a PIL image, the pixels are Pillow's whole-image
    reduce (reduce-nearest only) followed by Pillow's NEAREST, partial edge blocks and tie rounding
    included."""
    photo = Image.open(SAMPLES / "parrot.jpg").convert("RGB").resize(frame[::-1])
    fx, fy = (max(1, frame[1] // size), max(1, frame[0] // size)) if method == "reduce-nearest" else (1, 1)
    want = np.asarray(photo.reduce((fx, fy)).resize((size, size), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(load_image(np.asarray(photo), size, method, workers=workers), want)
    np.testing.assert_array_equal(load_image(photo, size, method, workers=workers), want)


def test_unknown_resize_method_says_to_upgrade():
    with pytest.raises(UserError, match="'lanczos9' is unknown.*upgrade edgetl"):
        load_image(np.zeros((50, 50, 3), np.uint8), 32, "lanczos9")
