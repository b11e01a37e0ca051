"""minicaffe.images: every Pillow mode to RGB, EXIF orientation, and one clear reason per bad file.

``make_bad_inputs`` builds the issue's list of bad inputs from a real photo and is reused by
tests/test_extract.py. Expected pixel values come from the source arrays the files were made
from, never from the code under test.
"""
import io
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from conftest import lazy_importorskip
from PIL import Image

from minicaffe.errors import ImageError
from minicaffe.images import load_image

SKIMAGE_DATA = lazy_importorskip("skimage.data")


def real_photo_path():
    return os.path.join(SKIMAGE_DATA.data_dir, "chelsea.png")


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png_bytes(w=50_000, h=50_000):
    """A valid PNG header claiming w x h pixels with a few bytes of data (decoding it would need GBs)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)   # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


#: name -> (expected outcome: substring of the failure reason, or None if the image must load)
BAD_INPUTS = {
    "truncated.jpg": "truncated",
    "empty.jpg": "empty file (0 bytes)",
    "not_an_image.jpg": "not a recognised image format",
    "one_pixel.png": "image too small: 1x1",
    "gray16.png": None,
    "cmyk.jpg": None,
    "rgba.png": None,
    "animated.gif": None,
    "bomb.png": "decompression bomb refused: 50000x50000",
    "folder.jpg": "is a directory",
    "unreadable.jpg": "permission denied",
}


def make_bad_inputs(folder):
    """Write every case of BAD_INPUTS into ``folder``; returns {name: path}. Also returns the
    source arrays used to make the convertible ones (key ``"_sources"``)."""
    os.makedirs(folder, exist_ok=True)
    photo = np.asarray(Image.open(real_photo_path()).convert("RGB"))[:120, :160]
    p = {n: os.path.join(folder, n) for n in BAD_INPUTS}
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    with open(p["truncated.jpg"], "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    open(p["empty.jpg"], "wb").close()
    with open(p["not_an_image.jpg"], "w") as f:
        f.write("this is a text file with an image extension\n" * 20)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(p["one_pixel.png"])
    gray16 = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(gray16).save(p["gray16.png"])
    Image.fromarray(photo).convert("CMYK").save(p["cmyk.jpg"], quality=95)
    alpha = np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None, :].repeat(photo.shape[0], 0)
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(p["rgba.png"])
    frames = [Image.new("RGB", (32, 24), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    frames[0].save(p["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    with open(p["bomb.png"], "wb") as f:
        f.write(bomb_png_bytes())
    os.makedirs(p["folder.jpg"], exist_ok=True)
    with open(p["unreadable.jpg"], "wb") as f:
        f.write(jpeg)
    os.chmod(p["unreadable.jpg"], 0)
    p["_sources"] = {"photo": photo, "gray16": gray16}
    return p


def reads_despite_chmod(path):
    """True where permissions do not block reading (running as root)."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_inputs(str(tmp_path_factory.mktemp("bad")))


@pytest.mark.parametrize("name", [n for n, why in BAD_INPUTS.items() if why is not None])
def test_bad_input_is_refused_with_reason(bad, name):
    if name == "unreadable.jpg" and reads_despite_chmod(bad[name]):
        pytest.skip("running as root: chmod 000 does not block reads here "
                    "(the message mapping is covered by test_permission_error_message)")
    with pytest.raises(ImageError) as e:
        load_image(bad[name])
    msg = str(e.value)
    assert msg.startswith(bad[name] + ": "), f"message must name the file first: {msg!r}"
    assert BAD_INPUTS[name] in msg, f"{name}: expected {BAD_INPUTS[name]!r} in {msg!r}"
    assert "\n" not in msg


def test_permission_error_message(bad, monkeypatch):
    """The PermissionError -> reason mapping, also where the process runs as root."""
    from minicaffe import images

    def no_read(path, mode="r", *a, **k):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(images, "open", no_read, raising=False)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(bad["rgba.png"])


def test_one_pixel_accepted_when_min_size_is_1(bad):
    img = load_image(bad["one_pixel.png"], min_size=1)
    assert img.shape == (1, 1, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (200, 10, 10)


def test_bomb_limit_is_adjustable():
    # a genuine (small) image is refused under a tiny limit and accepted at the default
    with pytest.raises(ImageError, match="decompression bomb refused: 451x300"):
        load_image(real_photo_path(), max_pixels=1000)
    assert load_image(real_photo_path()).shape == (300, 451, 3)


def test_gray16_scaled_not_clipped(bad):
    img = load_image(bad["gray16.png"])
    src = bad["_sources"]["gray16"].astype(np.float64)
    want = np.rint(src / 257.0)
    assert img.shape == src.shape + (3,)
    diff = np.abs(img[..., 0].astype(np.float64) - want)
    assert diff.max() == 0, f"16-bit scaling off by {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert img.max() > 200, "values must span the 8-bit range, not be clipped at 255 from the low byte"


def test_cmyk_jpeg_close_to_source(bad):
    img = load_image(bad["cmyk.jpg"]).astype(np.float64)
    src = bad["_sources"]["photo"].astype(np.float64)
    err = np.abs(img - src).mean()
    assert img.shape == src.shape and err < 8.0, f"CMYK JPEG -> RGB mean abs error {err:.2f} (JPEG-lossy, tol 8)"


def test_rgba_drops_alpha(bad):
    img = load_image(bad["rgba.png"])
    src = bad["_sources"]["photo"]
    assert np.array_equal(img, src), f"max diff {np.abs(img.astype(int) - src).max()}"


def test_animated_gif_first_frame(bad):
    img = load_image(bad["animated.gif"])
    assert img.shape == (24, 32, 3)
    r, g, b = img[12, 16].astype(int)
    assert r > 200 and g < 30 and b < 30, f"expected the first (red) frame, got {(r, g, b)}"


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "1", "I", "F", "RGBX", "YCbCr"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    src = np.asarray(Image.open(real_photo_path()).convert("RGB"))[:40, :50]
    base = Image.fromarray(src)
    im = base.convert(mode) if mode not in ("I", "F") else base.convert("L").convert(mode)
    path = str(tmp_path / f"x_{mode}.{'tiff' if mode in ('I', 'F', 'YCbCr', 'RGBX', 'PA') else 'png'}")
    im.save(path)
    img = load_image(path)
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8
    if mode in ("L", "LA", "I", "F"):
        gray = np.asarray(Image.fromarray(src).convert("L"))
        assert np.array_equal(img[..., 0], gray), \
            f"{mode}: gray mismatch {np.abs(img[..., 0].astype(int) - gray).max()}"


def test_exif_orientation_applied(tmp_path):
    # 20 rows x 40 cols: left half red, right half blue. Orientation 6 = "rotate 90 CW to display",
    # so the displayed image is 40 x 20 with red on top.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:, 2] = 255
    ex = Image.Exif()
    ex[0x0112] = 6
    path = str(tmp_path / "rot.png")
    Image.fromarray(a).save(path, exif=ex)
    img = load_image(path)
    assert img.shape == (40, 20, 3), img.shape
    assert img[5, 10, 0] == 255 and img[5, 10, 2] == 0, "top should be red after rotating 90 CW"
    assert img[35, 10, 2] == 255 and img[35, 10, 0] == 0, "bottom should be blue"


def test_png_named_jpg_decodes_by_content(tmp_path):
    src = str(tmp_path / "really_png.jpg")
    shutil.copy(real_photo_path(), src)
    assert np.array_equal(load_image(src), np.asarray(Image.open(real_photo_path()).convert("RGB")))


def test_missing_file():
    with pytest.raises(ImageError, match="no such file"):
        load_image("/nonexistent/x.jpg")
