"""The fast TIFF path: regions decoded from compressed tiles, every pyramid layout, every codec imagecodecs has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from scanbridge.devtools.synth import make_slide
from scanbridge.domain.errors import CorruptScanError, UnsupportedFormatError
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.readers.base import READ_BAND_PX, rgba_to_rgb
from scanbridge.imaging.readers.openslide_reader import OpenSlideReader
from scanbridge.imaging.tiling import grid_over_tissue, read_order
from scanbridge.inference.pipeline import read_tile
from tests.conftest import fixture_path

THIRDPARTY = {  # file -> (levels, codec); the same 1920 x 1440 real H&E mosaic at 0.5 µm/px
    "vips_pyramid_jpeg.tif": (4, "JPEG"),
    "vips_subifd_jpeg.tif": (4, "JPEG"),
    "vips_webp.tif": (4, "WEBP"),
    "vips_jp2k.tif": (4, "JPEG_2000"),
    "tifffile_subifd.ome.tif": (3, "JPEG"),
}


def _openslide_rgb(path: Path, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return rgba_to_rgb(np.asarray(slide.read_region(location, level, size)))  # what OpenSlideReader does


@pytest.mark.parametrize("name", sorted(THIRDPARTY))
def test_other_writers_pyramids_open_as_pyramids_with_their_pixel_size(name: str) -> None:
    # GIVEN a real tissue image written by libvips or tifffile (page, SubIFD or OME pyramid; JPEG, WebP, JP2K)
    path = fixture_path(f"thirdparty/{name}")
    levels, _codec = THIRDPARTY[name]
    # WHEN it is opened
    with_reader = open_scan([path])
    try:
        meta = with_reader.metadata
        # THEN every level is seen, with the pixel size the writer stored, and regions decode from tiles
        assert len(meta.level_dimensions) == levels
        assert meta.dimensions == (1920, 1440)
        assert meta.mpp is not None and meta.mpp[0] == pytest.approx(0.5, rel=1e-3)
        assert meta.properties["scanbridge.decoder"] == "tifffile+imagecodecs"
        region = with_reader.read_region((0, 0), levels - 1, (64, 64))
        assert region.shape == (64, 64, 3) and region.std() > 5  # tissue, not a blank fill
        thumb, ds = with_reader.thumbnail(256)
        assert max(thumb.shape[:2]) == 256 and ds == pytest.approx(7.5)
    finally:
        with_reader.close()


@pytest.mark.parametrize("name", ["vips_webp.tif", "vips_jp2k.tif", "vips_subifd_jpeg.tif"])
def test_every_codec_gives_the_same_tissue_as_the_jpeg_pyramid(name: str) -> None:
    # GIVEN the same mosaic written with another codec / layout, and the JPEG page pyramid as reference
    reference = open_scan([fixture_path("thirdparty/vips_pyramid_jpeg.tif")])
    other = open_scan([fixture_path(f"thirdparty/{name}")])
    try:
        # WHEN the same region of level 0 and level 2 is read from both (libvips 8.14 stores each lower JP2K
        # level converted to YCbCr once more per level, a writer bug we do not imitate: level 0 only there)
        for level in (0,) if name == "vips_jp2k.tif" else (0, 2):
            a = reference.read_region((256, 128), level, (300, 200)).astype(np.int16)
            b = other.read_region((256, 128), level, (300, 200)).astype(np.int16)
            # THEN they agree up to the lossy codecs' error (a misplaced tile would differ by far more)
            assert np.abs(a - b).mean() < 8.0, (name, level, np.abs(a - b).mean())
    finally:
        reference.close()
        other.close()


@pytest.mark.parametrize("name", ["vips_pyramid_jpeg.tif", "small.svs", "boxes.tiff"])
def test_tile_path_is_pixel_identical_to_openslide_at_integer_level_coordinates(name: str) -> None:
    # GIVEN a file OpenSlide reads (JPEG page pyramid, Aperio SVS, deflate pyramid), opened by open_scan
    path = fixture_path(name if name != "vips_pyramid_jpeg.tif" else f"thirdparty/{name}")
    reader = open_scan([path])
    try:
        meta = reader.metadata
        assert meta.properties["scanbridge.decoder"] == "tifffile+imagecodecs"
        for level, (lw, lh) in enumerate(meta.level_dimensions):
            ds = meta.level_downsamples[level]
            # WHEN regions that straddle tile seams and the image edge are read by both paths
            for lx, ly in ((0, 0), (lw // 3, lh // 4), (lw - 20, lh - 10)):
                location = (round(lx * ds), round(ly * ds))
                if abs(location[0] / ds - lx) > 1e-9 or abs(location[1] / ds - ly) > 1e-9:
                    continue  # not an integer level coordinate (a non-integer downsample)
                ours = reader.read_region(location, level, (70, 50))
                theirs = _openslide_rgb(path, location, level, (70, 50))
                # THEN every pixel is the same (white past the edge included)
                np.testing.assert_array_equal(ours, theirs)
    finally:
        reader.close()


def test_generated_aperio_slide_decodes_like_openslide_everywhere_the_pipeline_reads(tmp_path: Path) -> None:
    # GIVEN a generated Aperio-style SVS (JPEG YCbCr tiles, a two-level pyramid)
    path = tmp_path / "slide.svs"
    make_slide(path, 3000, 2200, tissue_fraction=0.5, seed=3)
    reader = open_scan([path])
    try:
        meta = reader.metadata
        assert len(meta.level_dimensions) > 1
        for level in range(len(meta.level_dimensions)):
            ds = meta.level_downsamples[level]
            for tx, ty in ((0, 0), (512, 256), (700, 333)):
                location = (round(tx * ds), round(ty * ds))
                # WHEN a model window is read by the tile path and by OpenSlide
                ours = reader.read_region(location, level, (256, 256))
                theirs = _openslide_rgb(path, location, level, (256, 256))
                # THEN every pixel is the same
                np.testing.assert_array_equal(ours, theirs)
    finally:
        reader.close()


def test_thumbnail_of_a_subifd_pyramid_reads_a_small_level_not_level_zero() -> None:
    # GIVEN a SubIFD pyramid (what libvips --subifd writes), which OpenSlide sees as one level
    reader = open_scan([fixture_path("thirdparty/vips_subifd_jpeg.tif")])
    try:
        tiles = reader._tiles  # type: ignore[attr-defined]
        level0_tiles = len(tiles.levels[0].offsets)
        # WHEN its thumbnail is made
        reader.thumbnail(256)
        # THEN only tiles of a small level were decoded, far fewer than level 0 holds
        assert 0 < tiles.tiles_decoded < level0_tiles / 4
    finally:
        reader.close()


def test_unknown_compression_is_unsupported_and_bad_tile_data_is_corrupt() -> None:
    # GIVEN a TIFF with a compression no codec knows, and an SVS whose tile data is corrupt
    # WHEN each is opened and read  THEN each gets its own stable error
    with pytest.raises(UnsupportedFormatError):
        open_scan([fixture_path("unopenable.tiff")])
    reader = open_scan([fixture_path("unreadable.svs")])
    try:
        with pytest.raises(CorruptScanError):
            reader.read_region((0, 0), 0, (16, 16))
    finally:
        reader.close()


def test_bench_times_openslide_on_the_same_tiles_next_to_the_tile_path(tmp_path: Path) -> None:
    # GIVEN a generated Aperio-style slide
    from scanbridge.devtools.bench import bench

    path = tmp_path / "slide.svs"
    make_slide(path, 2048, 1536, tissue_fraction=0.5, mpp=0.5, nuclei=False, seed=1)
    # WHEN the bench runs a model on it
    report = bench(path, "bench-conv", naive=False, prefer_gpu=False, readers=2, repeat=1)
    # THEN it reports OpenSlide's decode of the same tiles beside the pipeline's, and the level-0 area read
    assert report["decoder"] == "tifffile+imagecodecs"
    assert report["openslide_decode_s"] > 0 and report["decode_only_s"] > 0
    assert report["decode_vs_openslide"] == pytest.approx(report["openslide_decode_s"] / report["decode_only_s"], rel=0.05)
    side = report["tile_size"] * report["scale"]  # level-0 px per read window side at level 0
    assert report["decode_level0_mpx"] == pytest.approx(report["tiles_processed"] * side * side / 1e6, rel=0.02)
    assert report["dct_scale"] == 1  # the model reads at the slide's own 0.5 µm/px: nothing to scale


def test_bench_reports_the_dct_scale_when_the_model_reads_at_half_the_slide_resolution(tmp_path: Path) -> None:
    # GIVEN a generated slide at 0.25 µm/px and bench-conv, which reads at 0.5 µm/px
    from scanbridge.devtools.bench import dct_scale_used, load_model, tissue_grid

    path = tmp_path / "slide.svs"
    make_slide(path, 2048, 1536, tissue_fraction=0.5, mpp=0.25, nuclei=False, seed=1)
    model = load_model("bench-conv", prefer_gpu=False)
    fast = open_scan([path])
    slow = OpenSlideReader(path)
    try:
        grid = tissue_grid(fast, model, tile_size=None, overlap=None)
        # WHEN the bench asks which DCT reduction the tile path and OpenSlide alone use for its windows
        # THEN the tile path decodes at 1/2, OpenSlide at full size
        assert grid.scale == 2.0
        assert dct_scale_used(fast, grid) == 2 and dct_scale_used(slow, grid) == 1
    finally:
        fast.close()
        slow.close()


def _read_grid(path: Path, *, keep_all: bool = False, banded: bool = False) -> tuple[int, int, int]:
    """Every window of a nuclei-style grid over level 0 of `path` (512 px, 64 px of overlap on each side),
    read one by one in the grid's order (`banded`: in the object pipeline's, `read_order`), as the
    pipeline's readers take them: (tiles decoded, most tiles cached at once, the level's tiles across).
    `keep_all`: the cache drops nothing (a tile a window takes part of stays: what the 64 MiB LRU did on
    slides this small)."""
    reader = open_scan([path])
    try:
        tiles = reader.tiles  # type: ignore[attr-defined]
        assert tiles is not None  # the compressed-tile path
        if keep_all:
            tiles.row_tiles = lambda level, height: 10**9
            tiles._forget_above = lambda level, top: None
        grid = grid_over_tissue(0, reader.metadata.level_dimensions[0], 1.0, 512, None, 1.0, overlap=64)
        peak = 0
        for tile in read_order(grid) if banded else grid.tiles:
            read_tile(reader, grid, tile)
            peak = max(peak, tiles.cached_tiles)
        return tiles.tiles_decoded, peak, tiles.levels[0].across
    finally:
        reader.close()


def test_the_tile_cache_keeps_one_row_of_windows_however_tall_the_slide(tmp_path: Path) -> None:
    """Memory flat in the slide (issue #17 item 5): windows overlapping by 64 px on each side share the tiles
    at their seams; the cache keeps at most one row of windows' tiles, and loses no reuse for it."""
    peaks = {}
    for height in (1024, 4096):
        # GIVEN a generated slide 2048 px wide (256-px JPEG tiles), and 512-px windows overlapping by 64 px
        # on each side (the nuclei model's grid: not aligned on the tiles)
        path = tmp_path / f"slide{height}.svs"
        make_slide(path, 2048, height, tissue_fraction=0.5, nuclei=False, seed=2)
        # WHEN every window is read in the grid's order, and again with a cache that drops nothing
        decoded, peak, across = _read_grid(path)
        decoded_all, peak_all, _ = _read_grid(path, keep_all=True)
        # THEN no more tiles were decoded than with the cache that keeps everything (each reuse still hit)
        assert decoded == decoded_all, (height, decoded, decoded_all)
        # AND the cache never held more than one row of windows' tiles (3 tile rows: what a 512-px window
        # spans) plus one tile row, of the 8 tiles across
        assert across == 8
        assert peak <= 4 * across, (height, peak)
        peaks[height] = (peak, peak_all)
    # AND so it held about as much on the slide 4 times as tall, where keeping everything held 4 times as much
    assert peaks[4096][0] <= peaks[1024][0] + across
    assert peaks[4096][1] >= 3 * peaks[1024][1] > 2 * 4 * across


def test_read_in_bands_the_tile_cache_keeps_one_band_of_windows_however_wide_the_slide(tmp_path: Path) -> None:
    """Memory flat in the slide's width (issue #17 item 5): read row by row across the level, the tiles kept
    for the next row of windows grow with the width; read in bands of READ_BAND_PX (the object pipeline's
    order), they stay one band's, and only the bands' seams are decoded twice."""
    peaks, decodes = {}, {}
    for width in (READ_BAND_PX, 3 * READ_BAND_PX):
        # GIVEN a generated slide one and three bands wide (256-px JPEG tiles), and the nuclei-style grid
        path = tmp_path / f"wide{width}.svs"
        make_slide(path, width, 1280, tissue_fraction=0.5, nuclei=False, seed=2)
        # WHEN every window is read in bands, and row by row with a cache that drops nothing
        decoded, peak, across = _read_grid(path, banded=True)
        decoded_all, peak_all, _ = _read_grid(path, keep_all=True)
        peaks[width], decodes[width] = (peak, peak_all), (decoded, decoded_all)
        # THEN the bands' cache held at most one band's row of windows (34 tiles across: a band's 32 and its
        # edges, 4 tile rows), and decoded at most 10 % more tiles than the cache that keeps everything
        assert across == width // 256
        assert peak <= 34 * 4, (width, peak)
        assert decoded_all <= decoded <= 1.1 * decoded_all, (width, decoded, decoded_all)
    # AND held about as much on the slide three times as wide, where keeping everything held twice as much
    narrow, wide = peaks[READ_BAND_PX], peaks[3 * READ_BAND_PX]
    assert wide[0] <= narrow[0] + 8 and wide[1] >= 2 * narrow[1], peaks


def test_wsidicomizer_series_is_read_from_its_frames_like_openslide() -> None:
    # GIVEN a real DICOM WSI series written by wsidicomizer (one JPEG-baseline file per level)
    folder = fixture_path("thirdparty/wsidicomizer_series")
    paths = sorted(folder.glob("*.dcm"))
    # WHEN it is opened by open_scan (pydicom frames + imagecodecs) and by OpenSlide
    reader = open_scan(paths)
    try:
        assert reader.metadata.properties["scanbridge.reader"] == "pydicom"
        assert len(reader.metadata.level_dimensions) == 4
        with openslide.OpenSlide(str(paths[0])) as slide:
            for level, (lw, lh) in enumerate(reader.metadata.level_dimensions):
                ds = reader.metadata.level_downsamples[level]
                location = (round(lw // 3 * ds), round(lh // 5 * ds))
                theirs = rgba_to_rgb(np.asarray(slide.read_region(location, level, (90, 70))))
                # THEN every level's pixels are OpenSlide's
                np.testing.assert_array_equal(reader.read_region(location, level, (90, 70)), theirs)
    finally:
        reader.close()


def _tissue_levels() -> list[np.ndarray]:
    """Real H&E (the thirdparty mosaic's tissue, 768 x 512) and two 2x box-averaged levels below it."""
    reader = open_scan([fixture_path("thirdparty/vips_pyramid_jpeg.tif")])
    try:
        base = reader.read_region((128, 256), 0, (768, 512))
    finally:
        reader.close()
    levels = [base]
    for _ in range(2):
        prev = levels[-1].astype(np.uint16)
        levels.append(((prev[0::2, 0::2] + prev[1::2, 0::2] + prev[0::2, 1::2] + prev[1::2, 1::2] + 2) // 4)
                      .astype(np.uint8))
    return levels


#: (tifffile compression, its arguments) -> the mean absolute difference allowed (0: lossless, exact)
CODECS = {
    ("zstd", None): 0.0,
    ("jpegxl", (("lossless", True), ("effort", 1))): 0.0,  # effort, method: the encoders' speed
    ("webp", (("lossless", True), ("method", 0))): 0.0,
    ("jpeg2000", (("level", 0),)): 0.0,  # reversible 5/3 wavelet
    ("jpegxl", (("level", 90), ("effort", 1))): 5.0,
    ("webp", (("level", 90), ("method", 0))): 5.0,
}


@pytest.mark.parametrize("layout", ["subifds", "pages"])
@pytest.mark.parametrize(("compression", "args"), sorted(CODECS, key=str))
def test_tifffile_pyramids_in_every_codec_open_as_pyramids_and_decode_to_what_was_written(
        tmp_path: Path, compression: str, args: tuple[tuple[str, object], ...] | None, layout: str) -> None:
    # GIVEN real tissue written by tifffile as a tiled 3-level pyramid (levels in SubIFDs, or as pages) in
    # zstd, JPEG XL, WebP or JPEG 2000 (lossless, and lossy at quality 90)
    import tifffile

    levels = _tissue_levels()
    path = tmp_path / f"{compression}.tif"
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if layout == "subifds" and i == 0 else {"subfiletype": int(i > 0)}
            tw.write(level, tile=(128, 128), compression=compression, compressionargs=dict(args or ()),
                     photometric="rgb", metadata=None, **extra)  # type: ignore[arg-type]
    # WHEN it is opened and each level read whole
    reader = open_scan([path])
    try:
        meta = reader.metadata
        got = [reader.read_region((0, 0), i, (lv.shape[1], lv.shape[0])) for i, lv in enumerate(levels)]
    finally:
        reader.close()
    # THEN it is a 3-level pyramid decoded from its tiles, each level the pixels written (lossless) or
    # within the codec's error (lossy; a misplaced tile or a level swap would differ by tens)
    assert meta.level_dimensions == ((768, 512), (384, 256), (192, 128))
    assert meta.properties["scanbridge.decoder"] == "tifffile+imagecodecs"
    for i, (written, read) in enumerate(zip(levels, got, strict=True)):
        diff = np.abs(written.astype(np.int16) - read.astype(np.int16))
        if CODECS[(compression, args)] == 0.0:
            np.testing.assert_array_equal(read, written, err_msg=f"level {i}")
        else:
            assert diff.mean() <= CODECS[(compression, args)], (i, diff.mean())


def test_only_tiles_a_window_takes_part_of_are_cached() -> None:
    """Memory stays flat for tile-aligned models (issue #17 item 5): a tile read whole is not read again,
    so it is not kept; a tile an overlapping window takes part of is kept for the next window."""
    # GIVEN a real libvips JPEG pyramid (256-px tiles) opened on the compressed-tile path
    reader = open_scan([fixture_path("thirdparty/vips_pyramid_jpeg.tif")])
    try:
        tiles = reader.tiles  # type: ignore[attr-defined]
        assert tiles is not None  # OpenSlide's reader on the compressed-tile path
        # WHEN two tile-aligned 512-px windows are read side by side (what the tissue model reads)
        reader.read_region((0, 0), 0, (512, 512))
        reader.read_region((512, 0), 0, (512, 512))
        # THEN their eight tiles were decoded and none is held
        assert tiles.tiles_decoded == 8 and len(tiles._cache) == 0  # type: ignore[attr-defined]
        # WHEN two windows overlap by 64 px (a nuclei-style grid)
        before = tiles.tiles_decoded
        first = reader.read_region((1024, 0), 0, (320, 256))
        second = reader.read_region((1280, 0), 0, (320, 256))
        # THEN the tile both take part of was decoded once and served from the cache the second time
        assert tiles.tiles_decoded - before == 3, tiles.tiles_decoded - before
        np.testing.assert_array_equal(first[:, 256:], second[:, :64])
    finally:
        reader.close()
