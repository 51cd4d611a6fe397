"""Unit tests of image reading and writing (hndsr.raster, image_read, image_write), in tmp_path."""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image, ImageFile
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from hndsr.errors import InputError, OutputValidationError, ScaleError, UnsupportedFormatError
from hndsr.image_read import read_image, read_image_bytes
from hndsr.image_write import encode_image, write_image
from hndsr.raster import SUPPORTED_SUFFIXES, GeoInfo, Raster, is_image_file

UTM18N = CRS.from_epsg(32618)
ONE_METRE = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 4_200_000.0)


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _noise_rgb8(h: int = 48, w: int = 40) -> np.ndarray:
    return _rng().integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_geotiff(path: Path, pixels: np.ndarray, *, nodata: float | None = 0) -> None:
    count, height, width = pixels.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=pixels.dtype.name,
        crs=UTM18N,
        transform=ONE_METRE,
        nodata=nodata,
    ) as dst:
        dst.write(pixels)


@contextmanager
def _not_georeferenced_ok() -> Iterator[None]:
    """For the tests' own rasterio calls on plain images (imageio silences this itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _write_plain(path: Path, pixels: np.ndarray, driver: str) -> Path:
    """``pixels`` (bands, H, W) written by rasterio with no georeferencing."""
    bands, h, w = pixels.shape
    with (
        _not_georeferenced_ok(),
        rasterio.open(path, "w", driver=driver, width=w, height=h, count=bands, dtype=pixels.dtype) as dst,
    ):
        dst.write(pixels)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# ------------------------------------------------------------------------------------------- round trips


def test_png_rgb8_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = _noise_rgb8()
    src = tmp_path / "in.png"
    Image.fromarray(pixels).save(src)

    raster = read_image(src)
    assert raster.dtype == "uint8"
    assert raster.data.dtype == np.float32
    assert (raster.bands, raster.height, raster.width) == (3, 48, 40)
    assert raster.band_names == ("red", "green", "blue")
    assert raster.profile is None
    assert raster.data.min() >= 0.0 and raster.data.max() <= 1.0
    np.testing.assert_array_equal(raster.rgb(), np.moveaxis(pixels, -1, 0) / np.float32(255))
    assert raster.extra_bands() is None

    out = tmp_path / "out.png"
    write_image(out, raster)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temp leftovers


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = _rng().integers(0, 256, (8, 9, 4), dtype=np.uint8)
    src = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(src)
    raster = read_image(src)
    assert raster.bands == 3
    np.testing.assert_array_equal(raster.data * 255, np.moveaxis(rgba[..., :3], -1, 0))


def test_jpeg_reads(tmp_path: Path) -> None:
    # Smooth content so JPEG's loss is small and the comparison meaningful.
    yy, xx = np.mgrid[0:32, 0:32]
    pixels = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1).astype(np.uint8)
    src = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(src, quality=95)

    raster = read_image(src)
    assert raster.dtype == "uint8"
    assert raster.data.shape == (3, 32, 32)
    assert np.abs(raster.data * 255 - np.moveaxis(pixels, -1, 0)).mean() < 4.0

    out = tmp_path / "again.jpeg"
    write_image(out, raster)
    assert read_image(out).data.shape == (3, 32, 32)


def test_png16_grayscale_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = _rng().integers(0, 65536, (20, 30), dtype=np.uint16)
    src = tmp_path / "gray16.png"
    Image.fromarray(pixels).save(src)

    raster = read_image(src)
    assert raster.dtype == "uint16"
    assert raster.bands == 1
    np.testing.assert_array_equal(np.rint(raster.data[0] * 65535).astype(np.uint16), pixels)

    out = tmp_path / "gray16_out.png"
    write_image(out, raster)
    again = np.asarray(Image.open(out))
    assert again.dtype == np.uint16
    np.testing.assert_array_equal(again, pixels)


def test_png16_rgb_round_trip_is_exact(tmp_path: Path) -> None:
    # Pillow would truncate this to 8 bits; imageio routes it through GDAL both ways.
    pixels = _rng().integers(0, 65536, (3, 12, 10), dtype=np.uint16)
    raster = Raster(data=pixels / np.float32(65535), dtype="uint16")
    out = tmp_path / "rgb16.png"
    write_image(out, raster)
    assert out.read_bytes()[24] == 16  # IHDR bit depth

    again = read_image(out)
    assert again.dtype == "uint16"
    assert again.profile is None
    np.testing.assert_array_equal(np.rint(again.data * 65535).astype(np.uint16), pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb16.png"]  # no .aux.xml sidecar


def test_png16_rgba_drops_alpha(tmp_path: Path) -> None:
    pixels = _rng().integers(0, 65536, (4, 6, 5), dtype=np.uint16)
    src = _write_plain(tmp_path / "rgba16.png", pixels, "PNG")
    assert src.read_bytes()[25] == 6  # colour type RGBA
    raster = read_image(src)
    assert raster.bands == 3
    np.testing.assert_array_equal(np.rint(raster.data * 65535).astype(np.uint16), pixels[:3])


def test_tiff16_three_band_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = _rng().integers(0, 65536, (3, 17, 23), dtype=np.uint16)
    src = _write_plain(tmp_path / "plain.tif", pixels, "GTiff")

    raster = read_image(src)
    assert raster.dtype == "uint16"
    assert raster.profile is None  # no CRS, identity transform
    out = tmp_path / "plain_out.tiff"
    write_image(out, raster)
    with _not_georeferenced_ok(), rasterio.open(out) as check:
        assert check.dtypes == ("uint16",) * 3
        np.testing.assert_array_equal(check.read(), pixels)


def test_geotiff_4band_round_trip_keeps_georeferencing(tmp_path: Path) -> None:
    pixels = _rng().integers(0, 256, (4, 16, 16), dtype=np.uint8)
    src = tmp_path / "scene.tif"
    _write_geotiff(src, pixels, nodata=0)

    raster = read_image(src)
    assert raster.bands == 4
    assert raster.band_names == ("red", "green", "blue", "nir")
    extra = raster.extra_bands()
    assert extra is not None and extra.shape == (1, 16, 16)
    geo = raster.profile
    assert geo is not None
    assert CRS.from_wkt(geo.crs or "").to_epsg() == 32618
    assert geo.transform == tuple(ONE_METRE)[:6]
    assert geo.nodata == 0.0

    raster.data = 1.0 - raster.data  # modify, then write
    out = tmp_path / "scene_out.tif"
    write_image(out, raster)
    again = read_image(out)
    assert again.profile == geo
    assert again.bands == 4
    assert again.band_names == ("red", "green", "blue", "nir")
    np.testing.assert_array_equal(np.rint(again.data * 255), 255 - pixels)

    scaled = geo.scaled(4, 4)
    assert scaled.transform == (0.25, 0.0, 500_000.0, 0.0, -0.25, 4_200_000.0)
    assert scaled.crs == geo.crs and scaled.nodata == geo.nodata

    # A 4x output written with the scaled georeferencing covers the same footprint.
    big = Raster(data=np.repeat(np.repeat(raster.data, 4, 1), 4, 2), dtype="uint8", profile=scaled)
    big_path = tmp_path / "scene_x4.tif"
    write_image(big_path, big)
    with rasterio.open(big_path) as check:
        assert check.res == (0.25, 0.25)
        assert check.bounds == rasterio.open(src).bounds
        assert check.crs == UTM18N
        assert check.count == 4


def test_geoinfo_scaled_rejects_bad_scale() -> None:
    geo = GeoInfo(crs="EPSG:32618", transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), nodata=None)
    with pytest.raises(ScaleError):
        geo.scaled(0, 4)


def test_read_image_bytes_equals_read_image(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(_noise_rgb8()).save(png)
    tif = tmp_path / "a.tif"
    _write_geotiff(tif, _rng().integers(0, 256, (4, 8, 8), dtype=np.uint8))
    for path in (png, tif):
        from_file = read_image(path)
        from_bytes = read_image_bytes(path.read_bytes())
        np.testing.assert_array_equal(from_bytes.data, from_file.data)
        assert from_bytes.dtype == from_file.dtype
        assert from_bytes.profile == from_file.profile
        assert from_bytes.band_names == from_file.band_names


def test_encode_image_png_and_geotiff_decode_back(tmp_path: Path) -> None:
    pixels = _rng().integers(0, 256, (4, 8, 8), dtype=np.uint8)
    src = tmp_path / "s.tif"
    _write_geotiff(src, pixels)
    raster = read_image(src)

    png = encode_image(raster, "png")
    assert png.startswith(b"\x89PNG")
    back = read_image_bytes(png)
    assert back.bands == 3  # PNG keeps the first three
    np.testing.assert_array_equal(back.data, raster.data[:3])

    tif = encode_image(raster, "geotiff")
    back = read_image_bytes(tif)
    assert back.profile == raster.profile
    np.testing.assert_array_equal(back.data, raster.data)

    jpg = encode_image(raster, "jpg")
    assert read_image_bytes(jpg).data.shape == (3, 8, 8)
    with pytest.raises(UnsupportedFormatError):
        encode_image(raster, "webp")


def test_writer_clips_and_rounds(tmp_path: Path) -> None:
    data = np.array([[[-0.5, 0.2, 0.5, 1.5]]] * 3, dtype=np.float32)
    out = tmp_path / "c.png"
    write_image(out, Raster(data=data, dtype="float32"))  # float source -> uint8 by default
    np.testing.assert_array_equal(np.asarray(Image.open(out))[0, :, 0], [0, 51, 128, 255])


def test_float32_tiff_output(tmp_path: Path) -> None:
    data = _rng().random((3, 5, 6), dtype=np.float32)
    out = tmp_path / "f.tif"
    write_image(out, Raster(data=data), dtype="float32")
    again = read_image(out)
    assert again.dtype == "float32"
    np.testing.assert_array_equal(again.data, data)
    with pytest.raises(InputError, match="float32"):
        write_image(tmp_path / "f.png", Raster(data=data), dtype="float32")


# ---------------------------------------------------------------------------------------------- errors


def _assert_input_error(path: Path, **kwargs: int) -> InputError:
    with pytest.raises(InputError) as info:
        read_image(path, **kwargs)
    assert path.name in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "empty" in str(_assert_input_error(path))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("lenient_pillow", [False, True])
def test_truncated_png_and_jpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, lenient_pillow: bool
) -> None:
    # Even with Pillow's process-wide LOAD_TRUNCATED_IMAGES switched on, a cut file is an error.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pillow)
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(_noise_rgb8(64, 64)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_input_error(path)
    with pytest.raises(InputError):
        read_image_bytes(data[: len(data) // 2])


def test_truncated_tiff(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    _write_geotiff(path, _rng().integers(0, 256, (3, 64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_input_error(path)


@pytest.mark.parametrize("name", ["noise.png", "noise.tif", "noise.jpg"])
def test_garbage_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(_rng().integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_input_error(path)


def test_png_signature_followed_by_garbage(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    _assert_input_error(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.bmp"
    Image.fromarray(_noise_rgb8()).save(path)
    with pytest.raises(UnsupportedFormatError, match=r"'\.bmp'.*x\.bmp.*PNG, JPEG, TIFF or GeoTIFF"):
        read_image(path)
    with pytest.raises(UnsupportedFormatError):
        write_image(tmp_path / "y.bmp", read_image_bytes(encode_image(Raster(np.zeros((3, 2, 2))), "png")))


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in str(_assert_input_error(tmp_path / "nowhere.tif"))


def test_too_many_pixels(tmp_path: Path) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(_noise_rgb8(16, 16)).save(png)
    tif = tmp_path / "big.tif"
    _write_geotiff(tif, _rng().integers(0, 256, (3, 16, 16), dtype=np.uint8))
    for path in (png, tif):
        err = _assert_input_error(path, max_pixels=100)
        assert "100" in str(err) and "tile" in str(err)
        assert read_image(path, max_pixels=256).width == 16
        with pytest.raises(InputError, match="limit"):
            read_image_bytes(path.read_bytes(), max_pixels=100)


def test_size_is_checked_before_decoding(tmp_path: Path) -> None:
    # Headers claiming more than 400M pixels and no pixel data: the limit trips before decoding.
    png = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    assert "limit" in str(_assert_input_error(png))

    tif = tmp_path / "bomb.tif"
    with (
        _not_georeferenced_ok(),
        rasterio.open(
            tif,
            "w",
            driver="GTiff",
            width=40_000,
            height=20_000,
            count=3,
            dtype="uint8",
            tiled=True,
            blockxsize=1024,
            blockysize=1024,
            sparse_ok=True,
            compress="deflate",
        ),
    ):
        pass  # never written: a sparse file of a few KB
    assert tif.stat().st_size < 100_000
    assert "limit" in str(_assert_input_error(tif))


def test_rgb_of_one_band_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(_noise_rgb8()[..., 0]).save(path)
    raster = read_image(path)
    assert raster.bands == 1
    with pytest.raises(InputError, match=r"needs at least 3 bands \(R,G,B\); got 1"):
        raster.rgb()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["out.png", "out.tif", "out.jpg"])
def test_non_finite_output_raises_and_leaves_no_file(tmp_path: Path, bad: float, name: str) -> None:
    data = np.full((3, 4, 4), 0.5, dtype=np.float32)
    data[1, 2, 3] = bad
    with pytest.raises(OutputValidationError):
        write_image(tmp_path / name, Raster(data=data))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "keep.png"
    good = Raster(data=np.full((3, 4, 4), 0.5, dtype=np.float32))
    write_image(out, good)
    before = out.read_bytes()
    bad = Raster(data=np.full((3, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(OutputValidationError):
        write_image(out, bad)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_write_errors(tmp_path: Path) -> None:
    raster = Raster(data=np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="2-band"):
        write_image(tmp_path / "two.png", raster)
    with pytest.raises(InputError, match="does not exist"):
        write_image(tmp_path / "missing" / "x.tif", raster)
    with pytest.raises(InputError, match="JPEG"):
        write_image(tmp_path / "x.jpg", Raster(data=np.zeros((3, 4, 4))), dtype="uint16")


def test_is_image_file(tmp_path: Path) -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff"} == SUPPORTED_SUFFIXES
    img = tmp_path / "A.TIF"
    img.write_bytes(b"x")
    assert is_image_file(img)
    assert not is_image_file(tmp_path / "absent.png")
    assert not is_image_file(tmp_path / "notes.txt")


@pytest.mark.parametrize("level", [0, 1, 3, 6])  # stored, ISA-L (1-3), zlib
@pytest.mark.parametrize(("bands", "dtype"), [(1, np.uint8), (3, np.uint8), (1, np.uint16), (3, np.uint16)])
def test_png_writer_round_trips_exactly(bands: int, dtype: type, level: int) -> None:
    from hndsr.image_write import png_bytes

    rng = np.random.default_rng(bands)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top + 1, size=(bands, 37, 53), dtype=dtype)
    pixels[:, 5] = top  # rows whose Up difference wraps around modulo 256
    pixels[:, 6] = 0
    raster = read_image_bytes(png_bytes(pixels, level=level), name="x.png")
    assert raster.dtype == np.dtype(dtype).name and raster.data.shape == pixels.shape
    np.testing.assert_array_equal(np.rint(raster.data * top).astype(dtype), pixels)


def test_deflate_levels_give_standard_zlib_streams() -> None:
    import zlib

    from hndsr.image_write import deflate

    data = np.random.default_rng(0).integers(0, 8, 100_000, dtype=np.uint8).tobytes()
    for level in range(10):
        assert zlib.decompress(deflate(data, level)) == data, level


def test_png_writer_refuses_what_png_cannot_hold() -> None:
    from hndsr.image_write import png_bytes

    with pytest.raises(ValueError, match="1 or 3 bands"):
        png_bytes(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8/uint16"):
        png_bytes(np.zeros((3, 4, 4), np.float32))


def test_encoder_refuses_non_finite_outputs_but_not_huge_finite_ones() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        data = np.full((3, 8, 8), 0.5, np.float32)
        data[2, 3, 3] = bad
        with pytest.raises(OutputValidationError, match="1 non-finite"):
            encode_image(Raster(data=data, dtype="uint8"), "png")
    huge = np.full((3, 8, 8), 3e38, np.float32)  # finite, but their float32 sum overflows
    png = encode_image(Raster(data=huge, dtype="uint8"), "png")
    assert read_image_bytes(png).data.min() == 1.0  # clipped to white
