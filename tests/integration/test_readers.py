"""Every reader on real and generated files: DICOM (each transfer syntax, TILED_FULL/SPARSE, series in
several files, plain images, ZIPs), plain TIFFs; same pixels as OpenSlide where both read a file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile

from scanbridge.devtools import dicom_synth
from scanbridge.domain.errors import CorruptScanError, UnsafeArchiveError, UnsupportedFormatError
from scanbridge.imaging.readers import detect_format, open_scan
from scanbridge.imaging.readers.base import rgba_to_rgb
from scanbridge.imaging.readers.dicom_reader import DicomReader, open_dicom_series
from scanbridge.imaging.readers.openslide_reader import OpenSlideReader
from scanbridge.imaging.readers.tiff_reader import TiffFileReader
from tests.conftest import fixture_path

W, H, TILE = 200, 150, 64


def _source() -> np.ndarray:
    """A 200x150 RGB test image: gradients, a coloured box and a blank (white) corner."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // (W - 1), yy * 255 // (H - 1), (xx + yy) % 256], axis=-1).astype(np.uint8)
    img[40:80, 50:120] = (200, 30, 90)
    img[100:, 150:] = 255
    return img


SOURCE = _source()
PYRAMID = dicom_synth.pyramid(SOURCE, 2)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def _as_downloads(paths: list[Path], folder: Path) -> list[Path]:
    """Copy files to names like the fetcher's (file-0000, no extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        out.append(folder / f"file-{i:04d}")
        shutil.copyfile(p, out[-1])
    return out


# --- real fixtures --------------------------------------------------------------------------------


def test_boxes_dicom_pair_reads_like_openslide() -> None:
    # GIVEN the two files of the boxes DICOM series (JPEG VOLUME + uncompressed THUMBNAIL)
    paths = [fixture_path("boxes_0.dcm"), fixture_path("boxes_1.dcm")]
    # WHEN read by the pydicom reader and by OpenSlide
    mine = open_dicom_series(paths)
    theirs = OpenSlideReader(paths[0])
    # THEN both see one 16x16 level, the same metadata and the same pixels (also past the edge)
    assert mine.metadata.dimensions == theirs.metadata.dimensions == (16, 16)
    assert mine.metadata.mpp == theirs.metadata.mpp == (0.499, 0.499)
    assert mine.metadata.objective_power == theirs.metadata.objective_power == 20.0
    assert mine.metadata.associated_images == theirs.metadata.associated_images == ("thumbnail",)
    assert mine.metadata.transfer_syntax == "JPEG Baseline (Process 1)"
    assert _diff(mine.read_region((-3, -2), 0, (22, 21)), theirs.read_region((-3, -2), 0, (22, 21))).max() == 0
    assert _diff(mine.associated_image("thumbnail"), theirs.associated_image("thumbnail")).max() == 0
    mine.close()
    theirs.close()


def test_sm_image_25_frames_reads_like_openslide() -> None:
    # GIVEN highdicom's 50x50 WSI made of 25 10x10 frames
    path = fixture_path("sm_image.dcm")
    # WHEN read by both readers
    mine, theirs = open_dicom_series([path]), OpenSlideReader(path)
    # THEN the frames are assembled identically
    assert mine.metadata.level_dimensions == ((50, 50),)
    assert mine.levels[0].tile_w == 10 and mine.levels[0].parts[0].frames().layout.frames == 25
    assert _diff(mine.read_region((0, 0), 0, (50, 50)), theirs.read_region((0, 0), 0, (50, 50))).max() == 0
    assert _diff(mine.read_region((7, 13), 0, (21, 9)), theirs.read_region((7, 13), 0, (21, 9))).max() == 0
    mine.close()
    theirs.close()


def test_open_scan_on_downloaded_dicom_names_detects_from_content(tmp_path: Path) -> None:
    # GIVEN the boxes series saved under names without extensions
    paths = _as_downloads([fixture_path("boxes_1.dcm"), fixture_path("boxes_0.dcm")], tmp_path / "dl")
    # WHEN opened / THEN one DICOM WSI scan with its thumbnail, JPEG transfer syntax in the JSON view
    reader = open_scan(paths)
    info = reader.metadata.to_json()
    assert info["format"] == "dicom-wsi" and info["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert info["width"] == 16 and info["associated_images"] == ["thumbnail"]
    assert reader.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)
    reader.close()


# --- generated DICOM WSI series: every transfer syntax ---------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["full", "sparse"])
@pytest.mark.parametrize("syntax", sorted(dicom_synth.SYNTAXES))
def test_generated_series_round_trips(tmp_path: Path, syntax: str, sparse: bool) -> None:
    # GIVEN a 2-level series (64-px tiles; sparse: blank tiles left out, frames stored in reverse order)
    paths = dicom_synth.write_wsi_series(SOURCE, tmp_path, syntax=syntax, levels=2, tile=TILE, sparse=sparse,
                                         mpp=0.25, objective=40.0)
    # WHEN opened with the pydicom reader
    reader = open_dicom_series(paths)
    meta = reader.metadata
    # THEN the geometry and metadata come from the headers
    assert meta.level_dimensions == ((W, H), (W // 2, H // 2)) and meta.level_downsamples == (1.0, 2.0)
    assert meta.mpp == pytest.approx((0.25, 0.25)) and meta.objective_power == 40.0
    assert meta.transfer_syntax == dicom_synth.SYNTAXES[syntax].name
    assert meta.associated_images == ("thumbnail",)
    # AND the pixels read back equal the source (exact when lossless), at level 0 and level 1
    lossless = syntax in dicom_synth.LOSSLESS
    for level, expected in enumerate(PYRAMID):
        got = reader.read_region((0, 0), level, (expected.shape[1], expected.shape[0]))
        d = _diff(got, expected)
        assert (d.max() == 0) if lossless else (d.mean() < 3.0), (level, d.max(), d.mean())
    # AND level-0 locations land on the right pixels, across tile borders, at both levels
    tol = 0 if lossless else 40
    assert _diff(reader.read_region((74, 38), 0, (50, 40)), SOURCE[38:78, 74:124]).mean() <= tol / 10
    assert _diff(reader.read_region((20, 30), 1, (60, 30)), PYRAMID[1][15:45, 10:70]).mean() <= tol / 10
    # AND outside the image is white
    edge = reader.read_region((180, 140), 0, (40, 20))
    assert (edge[10:, :] == 255).all() and (edge[:, 20:] == 255).all()
    reader.close()


@pytest.mark.parametrize("syntax", ["explicit", "jpeg", "j2k"])
def test_generated_series_read_like_openslide(tmp_path: Path, syntax: str) -> None:
    # GIVEN a sparse generated series in a syntax OpenSlide decodes
    paths = dicom_synth.write_wsi_series(SOURCE, tmp_path, syntax=syntax, sparse=True)
    # WHEN read by the pydicom reader and by OpenSlide, and through open_scan
    mine, theirs = open_dicom_series(paths), OpenSlideReader(paths[0])
    routed = open_scan(paths)
    # THEN both give the same pixels at every level; open_scan serves it with the pydicom reader (the fast path)
    for level in (0, 1):
        size = (W // 2**level, H // 2**level)
        assert _diff(mine.read_region((0, 0), level, size), theirs.read_region((0, 0), level, size)).max() == 0
        assert _diff(routed.read_region((0, 0), level, size), theirs.read_region((0, 0), level, size)).max() == 0
    assert routed.metadata.properties["scanbridge.reader"] == "pydicom"
    assert routed.metadata.format == "dicom-wsi" and routed.metadata.transfer_syntax == mine.metadata.transfer_syntax
    for r in (mine, theirs, routed):
        r.close()


@pytest.mark.parametrize("syntax", ["deflated", "rle", "jpegls"])
def test_open_scan_uses_pydicom_where_openslide_refuses(tmp_path: Path, syntax: str) -> None:
    # GIVEN a series in a syntax OpenSlide cannot decode, saved as downloads
    paths = _as_downloads(dicom_synth.write_wsi_series(SOURCE, tmp_path / "w", syntax=syntax), tmp_path / "dl")
    # WHEN opened / THEN the pydicom reader serves it, exactly
    reader = open_scan(paths)
    assert isinstance(reader, DicomReader)
    assert _diff(reader.read_region((0, 0), 1, (100, 75)), PYRAMID[1]).max() == 0
    reader.close()


def test_thumbnail_and_associated_images(tmp_path: Path) -> None:
    # GIVEN a series with a thumbnail and a label
    label = np.full((20, 30, 3), (10, 200, 10), np.uint8)
    reader = open_dicom_series(dicom_synth.write_wsi_series(SOURCE, tmp_path, syntax="jpegls", label=label))
    # WHEN a thumbnail is asked for / THEN it fits, and its downsample is right
    thumb, ds = reader.thumbnail(50)
    assert thumb.shape == (37, 50, 3) and ds == pytest.approx(4.0)
    expected = dicom_synth.pyramid(SOURCE, 3)[2][:37, :50]
    assert _diff(thumb, expected).mean() < 4
    # AND the associated images are exposed by name and not used as levels
    assert reader.metadata.associated_images == ("label", "thumbnail")
    assert _diff(reader.associated_image("label"), label).max() == 0
    assert len(reader.metadata.level_dimensions) == 2
    with pytest.raises(KeyError):
        reader.associated_image("macro")
    reader.close()


def test_files_of_another_series_are_left_out(tmp_path: Path) -> None:
    # GIVEN two series' files mixed together (a small one and the real one)
    small = dicom_synth.write_wsi_series(SOURCE[:40, :40], tmp_path / "a", levels=1, thumbnail=False)
    big = dicom_synth.write_wsi_series(SOURCE, tmp_path / "b", levels=2, thumbnail=False)
    # WHEN opened / THEN the series of the largest VOLUME wins, whole
    reader = open_dicom_series([*small, *big])
    assert reader.metadata.level_dimensions == ((W, H), (W // 2, H // 2))
    reader.close()


# --- plain (non-WSI) DICOM ---------------------------------------------------------------------------


@pytest.mark.parametrize(("syntax", "frames"), [("explicit", 1), ("jpegls", 3), ("rle", 1)])
def test_plain_dicom_is_one_level_with_pixel_spacing(tmp_path: Path, syntax: str, frames: int) -> None:
    # GIVEN a secondary-capture image with PixelSpacing 0.002 mm
    path = dicom_synth.write_plain_dicom(SOURCE, tmp_path / "x", syntax=syntax, pixel_spacing_mm=0.002,
                                         frames=frames)
    # WHEN opened
    reader = open_scan([path])
    # THEN one level, mpp in µm, and the pixels of its (first) frame
    assert reader.metadata.format == "dicom" and reader.metadata.level_dimensions == ((W, H),)
    assert reader.metadata.mpp == pytest.approx((2.0, 2.0))
    assert _diff(reader.read_region((0, 0), 0, (W, H)), SOURCE).max() == 0
    reader.close()


# --- ZIP of DICOM ------------------------------------------------------------------------------------


def test_zip_of_a_series_opens_as_the_series_and_cleans_up(tmp_path: Path) -> None:
    # GIVEN a ZIP (downloaded as file-0000) holding a JPEG-LS series and a stray text file
    paths = dicom_synth.write_wsi_series(SOURCE, tmp_path / "w", syntax="jpegls", sparse=True)
    (tmp_path / "w" / "README").write_text("not an image")
    archive = dicom_synth.zip_files([*paths, tmp_path / "w" / "README"], tmp_path / "s.zip")
    [download] = _as_downloads([archive], tmp_path / "dl")
    assert detect_format(download) == "zip"
    # WHEN opened
    reader = open_scan([download])
    # THEN it reads as the series
    assert reader.metadata.level_dimensions == ((W, H), (W // 2, H // 2))
    assert _diff(reader.read_region((0, 0), 0, (W, H)), SOURCE).max() == 0
    unpacked = [p for p in (tmp_path / "dl").iterdir() if p.is_dir()]
    assert len(unpacked) == 1
    # AND closing removes the unpacked files
    reader.close()
    assert not unpacked[0].exists()


def test_unsafe_zip_is_refused_by_open_scan(tmp_path: Path) -> None:
    # GIVEN a ZIP whose entry climbs out of the folder
    import zipfile

    bad = tmp_path / "file-0000"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../escape.dcm", b"x" * 10)
    # WHEN opened / THEN SCAN_ARCHIVE_UNSAFE and nothing is left unpacked
    with pytest.raises(UnsafeArchiveError) as err:
        open_scan([bad])
    assert err.value.code == "SCAN_ARCHIVE_UNSAFE"
    assert [p.name for p in tmp_path.iterdir()] == ["file-0000"]


# --- bad input ---------------------------------------------------------------------------------------


def test_truncated_dicom_is_corrupt(tmp_path: Path) -> None:
    # GIVEN a JPEG 2000 level and an uncompressed one, each cut in the middle of its pixel data
    for syntax in ("j2k", "explicit"):
        [path] = dicom_synth.write_wsi_series(SOURCE, tmp_path / syntax, syntax=syntax, levels=1, thumbnail=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        # WHEN opened / THEN SCAN_CORRUPT
        with pytest.raises(CorruptScanError):
            open_scan([path])


def test_garbage_frame_fails_on_read_with_scan_corrupt(tmp_path: Path) -> None:
    # GIVEN a JPEG-LS level whose first frame's codestream is overwritten
    [path] = dicom_synth.write_wsi_series(SOURCE, tmp_path, syntax="jpegls", levels=1, thumbnail=False)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xd8\xff\xf7")
    data[start:start + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    reader = open_scan([path])
    # WHEN the first tile is read / THEN SCAN_CORRUPT (not a codec exception); other tiles still read
    with pytest.raises(CorruptScanError):
        reader.read_region((0, 0), 0, (10, 10))
    assert _diff(reader.read_region((W - 10, H - 10), 0, (10, 10)), SOURCE[H - 10:, W - 10:]).max() == 0
    reader.close()


def test_garbage_header_is_corrupt_and_unknown_syntax_unsupported(tmp_path: Path) -> None:
    # GIVEN a file with the DICOM magic but a garbage dataset, and one in a transfer syntax nobody decodes
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4)
    [path] = dicom_synth.write_wsi_series(SOURCE, tmp_path / "w", syntax="jpegls", levels=1, thumbnail=False)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.save_as(path, enforce_file_format=True)
    # WHEN opened / THEN SCAN_CORRUPT and SCAN_UNSUPPORTED_FORMAT
    with pytest.raises(CorruptScanError):
        open_scan([junk])
    with pytest.raises(UnsupportedFormatError) as err:
        open_scan([path])
    assert "MPEG2" in err.value.message


# --- TIFFs OpenSlide refuses ---------------------------------------------------------------------------


def test_stripped_and_ome_tiffs_open_with_tifffile(tmp_path: Path) -> None:
    # GIVEN a stripped TIFF with a resolution, an untiled OME-TIFF and a tiled OME-TIFF (both 0.25 µm/px)
    plain = tmp_path / "file-0000"
    tifffile.imwrite(plain, SOURCE, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    ome = tmp_path / "file-0001"
    tifffile.imwrite(ome, SOURCE, photometric="rgb", ome=True,
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    tiled = tmp_path / "file-0002"
    tifffile.imwrite(tiled, SOURCE, photometric="rgb", ome=True, tile=(16, 16), compression="zlib",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    # WHEN opened
    readers = [open_scan([p]) for p in (plain, ome, tiled)]
    # THEN the untiled ones are read by tifffile, the tiled one by OpenSlide, all with mpp and exact pixels
    assert isinstance(readers[0], TiffFileReader) and isinstance(readers[1], TiffFileReader)
    assert isinstance(readers[2], OpenSlideReader)
    assert [r.metadata.mpp for r in readers] == [pytest.approx((0.5, 0.5)), (0.25, 0.25), (0.25, 0.25)]
    assert readers[1].metadata.format == "ome-tiff"
    for r in readers:
        assert _diff(r.read_region((-5, 10), 0, (60, 40))[:, 5:], SOURCE[10:50, 0:55]).max() == 0
        thumb, ds = r.thumbnail(100)
        assert thumb.shape == (75, 100, 3) and ds == pytest.approx(2.0)
        r.close()


def test_unopenable_tiff_stays_unsupported() -> None:
    # GIVEN a TIFF with compression 52479 / WHEN opened / THEN SCAN_UNSUPPORTED_FORMAT (no tifffile fallback)
    with pytest.raises(UnsupportedFormatError):
        open_scan([fixture_path("unopenable.tiff")])


# --- CLI ---------------------------------------------------------------------------------------------


def test_inspect_prints_dicom_format_and_transfer_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a one-file RLE series
    [path] = dicom_synth.write_wsi_series(SOURCE, tmp_path, syntax="rle", levels=1, thumbnail=False)
    from scanbridge.entrypoints.cli import main

    # WHEN inspected / THEN the JSON names the format and the transfer syntax
    assert main(["inspect", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["detected"] == "dicom" and info["format"] == "dicom-wsi"
    assert info["transfer_syntax"] == "RLE Lossless" and info["mpp_x"] == pytest.approx(0.5)


def test_openslide_and_pydicom_agree_on_rgba_compositing() -> None:
    # GIVEN OpenSlide's premultiplied RGBA past the edge of a DICOM / WHEN composited / THEN white
    slide = openslide.OpenSlide(str(fixture_path("sm_image.dcm")))
    region = rgba_to_rgb(np.asarray(slide.read_region((45, 45), 0, (10, 10))))
    assert (region[5:, :] == 255).all() and (region[:, 5:] == 255).all()
    slide.close()
