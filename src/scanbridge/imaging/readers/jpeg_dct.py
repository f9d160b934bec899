"""JPEG tiles decoded at 1/2, 1/4 or 1/8 of their size in the DCT domain (libjpeg-turbo via simplejpeg).

When the model reads coarser than the scan level, decoding every tile at full size and then averaging
s x s blocks spends most of the time on pixels that are thrown away. libjpeg-turbo can instead run a
reduced inverse DCT on each 8 x 8 block (4 x 4, 2 x 2 or 1 x 1 outputs) and convert colour at the
reduced size. The pixels are close to, not equal to, a full decode followed by the pipeline's box
average (a reduced IDCT is its own low-pass; chroma is upsampled at the reduced size): on generated
and real scans the mean absolute difference is below 1 of 255 levels, the largest a few tens at sharp
colour edges (tests/integration/test_dct_scaling.py bounds both; docs/performance.md has the figures).

simplejpeg decodes whole JPEG streams and guesses the colour space as libjpeg does, so two TIFF/DICOM
conventions are applied to the stream first: an abbreviated TIFF tile gets its JPEGTables (tag 347)
spliced in, and a stream the container says is RGB but that carries no JFIF / Adobe marker (Aperio's
JPEG, DICOM RGB) gets an Adobe APP14 marker saying "no colour transform", the same decision tifffile
and the DICOM reader make for the full-size decode. Both are byte splices of a few lines: neither
tifffile nor imagecodecs exposes them (imagecodecs merges tables inside its own decoder, which has no
scaled decode).
"""

from __future__ import annotations

import numpy as np

#: the reductions libjpeg-turbo's scaled IDCT gives, largest first
DCT_SCALES = (8, 4, 2)
#: APP14 "Adobe", version 100, no flags, transform 0: three components are RGB, not YCbCr
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def dct_scale(read_size: int, tile_size: int) -> int:
    """The largest DCT reduction (8, 4 or 2; else 1) that divides `read_size` and still leaves at least
    `tile_size` pixels, so what remains to the model's scale is a resize down, never up."""
    for scale in DCT_SCALES:
        if read_size % scale == 0 and read_size // scale >= tile_size:
            return scale
    return 1


def splits_edge_block(start: int, length: int, size: int, scale: int) -> bool:
    """Whether [start, start + length) runs past an image edge at `size` that falls inside a scale x scale
    block (the block would average image and the white outside)."""
    return start + length > size and size % scale != 0


def with_tables(tables: bytes | None, data: bytes) -> bytes:
    """An abbreviated TIFF JPEG tile as one JPEG stream: the JPEGTables' segments (SOI ... EOI) go in after
    the tile's SOI. Unchanged without tables or when either part is not framed as JPEG."""
    if not tables or not tables.startswith(_SOI) or not tables.endswith(_EOI) or not data.startswith(_SOI):
        return data
    return tables[:-2] + data[2:]


def has_colour_marker(data: bytes) -> bool:
    """Whether a JPEG stream's header carries a JFIF or Adobe marker (which tell libjpeg its colour space)."""
    head = data[:512]
    return b"JFIF" in head or b"Adobe" in head


def mark_rgb(data: bytes) -> bytes:
    """`data` with an Adobe APP14 "no transform" marker after its SOI: libjpeg then reads three components
    as RGB, not as the YCbCr it assumes without markers."""
    if not data.startswith(_SOI):
        return data
    return _SOI + _ADOBE_RGB + data[2:]


def decode_scaled(stream: bytes, scale: int, width: int, height: int, *, grey: bool = False) -> np.ndarray | None:
    """A `width` x `height` JPEG decoded at 1/`scale` in the DCT domain: RGB uint8 (height // scale,
    width // scale, 3). None when the stream is another size or libjpeg-turbo refuses it (the caller then
    decodes at full size, which reports a corrupt tile as such)."""
    import simplejpeg

    want_w, want_h = width // scale, height // scale
    try:
        out = simplejpeg.decode_jpeg(stream, colorspace="GRAY" if grey else "RGB", min_factor=scale,
                                     min_width=want_w, min_height=want_h)
    except ValueError:  # simplejpeg's error for data libjpeg-turbo cannot decode (strict: warnings too)
        return None
    if out.shape[0] != want_h or out.shape[1] != want_w:
        return None
    if grey:
        return np.repeat(out.reshape(want_h, want_w, 1), 3, axis=2)
    return out
