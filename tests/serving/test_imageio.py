"""cxr.serving.imageio: JPEG/PNG/DICOM files and bytes -> the uint8 grayscale the cache holds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.data.cache import decode_image
from cxr.serving.imageio import ImageReadError, is_dicom, load_image, read_gray8
from toydata import RAMP16, write_dicom


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


RNG = np.random.default_rng(0)


# ---- DICOM ---------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted_relative_to_monochrome2(tmp_path):
    a = write_dicom(tmp_path / "m2.dcm", RAMP16, photometric="MONOCHROME2", bits_stored=12)
    b = write_dicom(tmp_path / "m1.dcm", RAMP16, photometric="MONOCHROME1", bits_stored=12)
    g2, g1 = read_gray8(a), read_gray8(b)
    assert g2.dtype == np.uint8 and g2.shape == RAMP16.shape
    np.testing.assert_array_equal(g1, 255 - g2)
    assert g2[0, 0] < g2[-1, -1]  # MONOCHROME2: high value = white
    # After the cache's resize too (bilinear may round a .5 differently: at most 1 grey level).
    r2, r1 = load_image(a, 16, "stretch"), load_image(b, 16, "stretch")
    assert np.abs(r1.astype(int) - (255 - r2.astype(int))).max() <= 1


def test_dicom_16bit_scales_to_full_range(tmp_path):
    gray = read_gray8(write_dicom(tmp_path / "x.dcm", RAMP16, bits_stored=16))
    assert gray.min() == 0 and gray.max() == 255
    expected = np.rint((RAMP16 - 1000.0) * 255.0 / (RAMP16.max() - 1000.0))
    np.testing.assert_array_equal(gray, expected.astype(np.uint8))
    # Not clipped like Pillow's convert('L') would: almost every grey level is used.
    assert len(np.unique(gray)) > 200


def test_dicom_rescale_and_window(tmp_path):
    stored = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 4  # 0 .. 4092
    slope, intercept = 2.0, -1024.0  # modality values -1024 .. 7160
    center, width = 2000.0, 4000.0  # window [0, 4000]: both ends clipped
    gray = read_gray8(
        write_dicom(
            tmp_path / "w.dcm", stored, bits_stored=12, slope=slope, intercept=intercept, window=(center, width)
        )
    )
    hu = stored * slope + intercept
    # PS3.3 C.11.2.1.2.1 LINEAR window, mapped to 0..255.
    expected = np.clip(((hu - (center - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    assert np.abs(gray.astype(float) - expected).max() <= 1.0
    assert gray.min() == 0 and gray.max() == 255
    assert (gray == 0).sum() > 1 and (gray == 255).sum() > 1  # clipped below and above the window
    # The window matters: without it the same data maps differently.
    plain = read_gray8(write_dicom(tmp_path / "p.dcm", stored, bits_stored=12, slope=slope, intercept=intercept))
    assert not np.array_equal(plain, gray)


def test_dicom_voi_lut_sequence(tmp_path):
    stored = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)  # 0..255
    lut = [min(4095, 4 * max(0, v - 64)) for v in range(256)]  # dark below 64, saturates near 255
    gray = read_gray8(write_dicom(tmp_path / "l.dcm", stored, bits_stored=12, voi_lut=(256, 0, lut)))
    expected = np.rint(np.asarray(lut)[stored] * 255.0 / max(lut))
    np.testing.assert_array_equal(gray, expected.astype(np.uint8))


def test_dicom_detected_by_content_and_without_preamble(tmp_path):
    path = write_dicom(tmp_path / "scan", RAMP16, bits_stored=12)  # no extension
    misnamed = tmp_path / "scan.jpeg"
    misnamed.write_bytes(path.read_bytes())
    assert is_dicom(path) and is_dicom(misnamed) and is_dicom(path.read_bytes())
    ref = read_gray8(path)
    np.testing.assert_array_equal(read_gray8(misnamed), ref)
    np.testing.assert_array_equal(read_gray8(path.read_bytes()), ref)
    raw = write_dicom(tmp_path / "raw.dcm", RAMP16, bits_stored=12, preamble=False)
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_gray8(raw), ref)


def test_dicom_8bit_and_pad(tmp_path):
    arr = RNG.integers(0, 256, (20, 40), dtype=np.uint8)
    path = write_dicom(tmp_path / "e.dcm", arr)
    out = load_image(path, 16, "pad")
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert (out[:4] == 0).all() and (out[-4:] == 0).all()  # 2:1 image padded top and bottom


def test_dicom_without_pixels_is_a_clear_error(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", RAMP16, pixel_data=False)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_gray8(path)


# ---- raster ----------------------------------------------------------------------------------


def test_raster_files_match_the_cache_decode_exactly(tmp_path):
    jpeg = tmp_path / "x.jpeg"
    Image.fromarray(RNG.integers(0, 256, (120, 90), dtype=np.uint8)).save(jpeg, quality=90)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(rgb)
    for path in (jpeg, rgb):
        for mode in ("stretch", "pad"):
            np.testing.assert_array_equal(load_image(path, 32, mode), decode_image(path, 32, mode))
        np.testing.assert_array_equal(load_image(path.read_bytes(), 32, "stretch"), decode_image(path, 32, "stretch"))


def test_png_16bit_uses_full_range(tmp_path):
    path = tmp_path / "x16.png"
    Image.fromarray(RAMP16).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really stored as 16-bit
    gray = read_gray8(path)
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 200
    np.testing.assert_array_equal(load_image(path, 16, "stretch"), decode_image(path, 16, "stretch"))


def test_png_rgba_transparent_is_black(tmp_path):
    arr = np.full((10, 10, 4), 255, dtype=np.uint8)
    arr[:5, :, 3] = 0  # top half transparent white
    gray = read_gray8(_png_bytes(arr))
    assert (gray[:5] == 0).all() and (gray[5:] == 255).all()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, not an image" * 10, "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt or truncated|not a recognised"),
    ],
)
def test_unreadable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ImageReadError, match=reason):
        load_image(data, 16)


def test_truncated_jpeg_and_missing_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpeg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated") as info:
        load_image(path, 16)
    assert info.value.source == str(path)
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png", 16)
