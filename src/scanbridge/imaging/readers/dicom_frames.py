"""Random access to the frames of one DICOM instance, decoded to RGB uint8 (pydicom + imagecodecs).

The header is parsed with pydicom (``stop_before_pixels``); the pixel data stays on disk and each
frame is read with ``os.pread`` (thread-safe, no shared file position). Encapsulated pixel data is
indexed once by walking its item headers. Deflated and big-endian files are the exception: they
cannot be seeked into, so their pixel data is inflated into memory.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset

from scanbridge.domain.errors import CorruptScanError, ScanbridgeError, UnsupportedFormatError
from scanbridge.imaging.readers.base import reduce_rgb

NATIVE_SYNTAXES = frozenset({
    dcm_uid.ImplicitVRLittleEndian, dcm_uid.ExplicitVRLittleEndian, dcm_uid.ExplicitVRBigEndian,
    dcm_uid.DeflatedExplicitVRLittleEndian,
})
IN_MEMORY_SYNTAXES = frozenset({dcm_uid.ExplicitVRBigEndian, dcm_uid.DeflatedExplicitVRLittleEndian})
JPEG_SYNTAXES = frozenset({dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEGExtended12Bit, dcm_uid.JPEGLossless,
                           dcm_uid.JPEGLosslessSV1})
JPEGLS_SYNTAXES = frozenset({dcm_uid.JPEGLSLossless, dcm_uid.JPEGLSNearLossless})
J2K_SYNTAXES = frozenset({dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000, dcm_uid.HTJ2KLossless,
                          dcm_uid.HTJ2KLosslessRPCL, dcm_uid.HTJ2K})
RLE_SYNTAXES = frozenset({dcm_uid.RLELossless})
#: photometric interpretations whose JPEG baseline frames decode at a DCT scale like at full size
DCT_PHOTOMETRICS = frozenset({"MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"})
SUPPORTED_SYNTAXES = NATIVE_SYNTAXES | JPEG_SYNTAXES | JPEGLS_SYNTAXES | J2K_SYNTAXES | RLE_SYNTAXES

_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian uint32
_SEQ_DELIM = 0xE0DDFFFE
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"


def read_header(path: Path) -> tuple[Dataset, int]:
    """The dataset without its pixel data, and the file offset of the Pixel Data element (-1 if none)."""
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pos = fh.tell()
            tag = fh.read(4)
    except ScanbridgeError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise CorruptScanError(f"the DICOM header cannot be parsed: {exc}") from exc
    return ds, pos if tag == _PIXEL_DATA_TAG_LE else -1


@dataclass(frozen=True)
class FrameLayout:
    """How one frame's pixels are laid out."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    planar: int
    signed: bool
    frames: int

    @classmethod
    def of(cls, ds: Dataset) -> FrameLayout:
        """The layout read from the Image Pixel module."""
        try:
            bits = int(ds.BitsAllocated)
            return cls(rows=int(ds.Rows), columns=int(ds.Columns), samples=int(ds.get("SamplesPerPixel", 1)),
                       bits_allocated=bits, bits_stored=int(ds.get("BitsStored", bits)),
                       photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
                       planar=int(ds.get("PlanarConfiguration", 0) or 0),
                       signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
                       frames=int(ds.get("NumberOfFrames", 1) or 1))
        except (AttributeError, TypeError, ValueError) as exc:
            raise CorruptScanError(f"the DICOM image pixel attributes are missing or invalid: {exc}") from exc

    @property
    def frame_bytes(self) -> int:
        """Bytes of one native (uncompressed) frame."""
        return self.rows * self.columns * self.samples * self.bits_allocated // 8


class FrameStore:
    """The frames of one instance: `frame(i)` gives RGB uint8 (rows, columns, 3)."""

    def __init__(self, path: Path, ds: Dataset, pixel_pos: int) -> None:
        self.path = path
        self.layout = FrameLayout.of(ds)
        self.syntax = dcm_uid.UID(str(ds.file_meta.get("TransferSyntaxUID", dcm_uid.ImplicitVRLittleEndian)))
        if self.syntax not in SUPPORTED_SYNTAXES:
            raise UnsupportedFormatError(f"DICOM transfer syntax {self.syntax} ({self.syntax.name}) is not supported",
                                         details={"transfer_syntax": str(self.syntax)})
        if self.layout.bits_allocated not in (8, 16) or self.layout.samples not in (1, 3):
            raise UnsupportedFormatError("only 8/16-bit grey or 3-sample colour DICOM images are supported")
        self._ds = ds
        self._fd: int | None = None
        self._memory: bytes | None = None
        self._lock = threading.Lock()
        try:
            self._index = self._open(path, pixel_pos)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, pixel_pos: int) -> list[list[tuple[int, int]]]:
        if self.syntax in IN_MEMORY_SYNTAXES:
            self._memory = self._load_in_memory()
            value_off, value_len = 0, len(self._memory)
            encapsulated = False
        else:
            if pixel_pos < 0:
                raise CorruptScanError("the DICOM file has no pixel data")
            self._fd = os.open(path, os.O_RDONLY)
            value_off, value_len = self._element_value(pixel_pos)
            encapsulated = value_len == 0xFFFFFFFF
            if not encapsulated and value_off + value_len > os.fstat(self._fd).st_size:
                raise CorruptScanError("the DICOM file is truncated", details={"file": path.name})
        if encapsulated:
            return self._index_fragments(value_off)
        if value_len < self.layout.frames * self.layout.frame_bytes:
            raise CorruptScanError("the DICOM pixel data is shorter than its frames",
                                   details={"length": value_len, "expected": self.layout.frames
                                            * self.layout.frame_bytes})
        fb = self.layout.frame_bytes
        return [[(value_off + i * fb, fb)] for i in range(self.layout.frames)]

    # -- reading -----------------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        if self._memory is not None:
            data = self._memory[offset:offset + length]
        else:
            assert self._fd is not None
            data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise CorruptScanError("the DICOM file is truncated", details={"file": self.path.name})
        return data

    def _load_in_memory(self) -> bytes:
        try:
            full = pydicom.dcmread(self.path)
            data = full.PixelData
        except Exception as exc:
            raise CorruptScanError(f"the DICOM pixel data cannot be read: {exc}") from exc
        if not isinstance(data, bytes):
            raise CorruptScanError("the DICOM file has no pixel data")
        if getattr(full["PixelData"], "is_undefined_length", False):
            # encapsulated inside a deflated file: not a combination the standard allows
            raise UnsupportedFormatError("encapsulated pixel data in a deflated/big-endian file")
        return data

    def _element_value(self, pos: int) -> tuple[int, int]:
        head = self._read(pos, 12)
        if head[4:6] in (b"OB", b"OW"):
            return pos + 12, struct.unpack("<I", head[8:12])[0]
        return pos + 8, struct.unpack("<I", head[4:8])[0]  # implicit VR

    def _index_fragments(self, offset: int) -> list[list[tuple[int, int]]]:
        """Walk the items of encapsulated pixel data: Basic Offset Table, then fragments."""
        fragments: list[tuple[int, int]] = []
        first = True
        while True:
            tag, length = struct.unpack("<II", self._read(offset, 8))
            offset += 8
            if tag == _SEQ_DELIM:
                break
            if tag != _ITEM or length == 0xFFFFFFFF:
                raise CorruptScanError("the DICOM encapsulated pixel data is malformed",
                                       details={"file": self.path.name})
            if not first:
                fragments.append((offset, length))
            first = False
            offset += length
        n = self.layout.frames
        if not fragments:
            raise CorruptScanError("the DICOM encapsulated pixel data has no fragments")
        if n == 1:
            return [fragments]
        if len(fragments) == n:
            return [[f] for f in fragments]
        # several fragments per frame: a frame starts where a codestream starts (JPEG SOI / J2K SOC)
        frames: list[list[tuple[int, int]]] = []
        for frag in fragments:
            start = self._read(frag[0], 2) if frag[1] >= 2 else b""
            if not frames or start in (b"\xff\xd8", b"\xff\x4f"):
                frames.append([frag])
            else:
                frames[-1].append(frag)
        if len(frames) < n:
            raise CorruptScanError("the DICOM pixel data holds fewer frames than NumberOfFrames",
                                   details={"frames": len(frames), "expected": n})
        return frames[:n]

    def frame_data(self, index: int) -> bytes:
        """The stored (possibly compressed) bytes of frame `index`."""
        if not 0 <= index < len(self._index):
            raise CorruptScanError(f"frame {index} is not in the file", details={"file": self.path.name})
        return b"".join(self._read(off, ln) for off, ln in self._index[index])

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` decoded to RGB uint8; a decoding failure is SCAN_CORRUPT."""
        data = self.frame_data(index)
        try:
            arr = self._decode(data)
            return self._to_rgb8(arr)
        except ScanbridgeError:
            raise
        except Exception as exc:  # codec errors come in many types
            raise CorruptScanError(f"DICOM frame {index} cannot be decoded ({self.syntax.name}): {exc}",
                                   details={"file": self.path.name}) from exc

    @property
    def dct_scalable(self) -> bool:
        """Whether frames decode at 1/2, 1/4, 1/8 in the DCT domain to what `frame` gives, box-averaged:
        8-bit JPEG baseline, grey or colour (RGB / YBR_FULL / YBR_FULL_422)."""
        lay = self.layout
        return (self.syntax == dcm_uid.JPEGBaseline8Bit and lay.bits_allocated == 8 and lay.samples in (1, 3)
                and lay.photometric in DCT_PHOTOMETRICS)

    def frame_scaled(self, index: int, scale: int) -> np.ndarray:
        """Frame `index` at 1/`scale`, RGB uint8 (rows // scale, columns // scale, 3): in the DCT domain
        where `dct_scalable`, otherwise decoded whole and box-averaged."""
        from scanbridge.imaging.readers import jpeg_dct

        lay = self.layout
        if self.dct_scalable and scale in jpeg_dct.DCT_SCALES and not lay.rows % scale and not lay.columns % scale:
            data = self.frame_data(index)
            if lay.photometric == "RGB" and not jpeg_dct.has_colour_marker(data):
                data = jpeg_dct.mark_rgb(data)  # as _jpeg_rgb_aware decides for the full-size decode
            tile = jpeg_dct.decode_scaled(data, scale, lay.columns, lay.rows, grey=lay.samples == 1)
            if tile is not None:
                return tile
        return reduce_rgb(self.frame(index), scale)

    # -- decoding ----------------------------------------------------------------------------------

    def _decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        lay = self.layout
        ts = self.syntax
        if ts in NATIVE_SYNTAXES:
            dtype = np.dtype(np.uint8) if lay.bits_allocated == 8 else np.dtype(
                ">u2" if ts == dcm_uid.ExplicitVRBigEndian else "<u2")
            arr = np.frombuffer(data, dtype=dtype)
            if lay.samples == 3 and lay.planar == 1:
                return arr.reshape(3, lay.rows, lay.columns).transpose(1, 2, 0)
            return arr.reshape(lay.rows, lay.columns, lay.samples)
        if ts in RLE_SYNTAXES:
            dtype = np.dtype(np.uint8) if lay.bits_allocated == 8 else np.dtype(">u2")
            raw = imagecodecs.dicomrle_decode(data, dtype)
            arr = np.frombuffer(raw, dtype=dtype)
            return arr.reshape(lay.samples, lay.rows, lay.columns).transpose(1, 2, 0)
        decoder: Callable[[bytes], Any]
        if ts in JPEG_SYNTAXES:
            decoder = imagecodecs.jpeg8_decode
            if lay.samples == 3 and lay.photometric == "RGB" and ts == dcm_uid.JPEGBaseline8Bit:
                # libjpeg guesses YCbCr for 3 components without markers; DICOM "RGB" says no transform
                decoder = _jpeg_rgb_aware
        elif ts in JPEGLS_SYNTAXES:
            decoder = imagecodecs.jpegls_decode
        else:
            decoder = imagecodecs.jpeg2k_decode
        try:
            arr = np.asarray(decoder(data))
        except Exception:
            if ts in (dcm_uid.JPEGLossless, dcm_uid.JPEGLosslessSV1):
                arr = np.asarray(imagecodecs.ljpeg_decode(data))
            else:
                raise
        return arr

    def _to_rgb8(self, arr: np.ndarray) -> np.ndarray:
        lay = self.layout
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[0] != lay.rows or arr.shape[1] != lay.columns:
            raise CorruptScanError(f"a DICOM frame decoded to {arr.shape[1]}x{arr.shape[0]}, "
                                   f"not {lay.columns}x{lay.rows}")
        photometric = lay.photometric
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr[:, :, 0], self._ds)
            return (arr >> 8).astype(np.uint8) if arr.dtype.itemsize > 1 else arr.astype(np.uint8)
        if arr.dtype.itemsize > 1 or lay.bits_stored > 8:
            shift = max(lay.bits_stored - 8, 0)
            if lay.signed:
                arr = arr.astype(np.int32) + (1 << (lay.bits_stored - 1))
            arr = np.clip(arr.astype(np.int64) >> shift, 0, 255)
        arr = arr.astype(np.uint8, copy=False)
        if arr.shape[2] == 1:
            if photometric == "MONOCHROME1":
                arr = 255 - arr
            return np.repeat(arr, 3, axis=2)
        if photometric in ("YBR_FULL", "YBR_FULL_422") and self.syntax not in (JPEG_SYNTAXES | J2K_SYNTAXES):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, "YBR_FULL", "RGB")
        return np.ascontiguousarray(arr[:, :, :3])

    def close(self) -> None:
        """Close the file descriptor."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._memory = None


def _jpeg_rgb_aware(data: bytes) -> Any:
    """Decode JPEG whose DICOM header says RGB: no colour transform unless a JFIF/Adobe marker says so."""
    import imagecodecs

    head = data[:512]
    if b"JFIF" in head or b"Adobe" in head:
        return imagecodecs.jpeg8_decode(data)
    return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
