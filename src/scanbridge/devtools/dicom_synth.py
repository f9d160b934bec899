"""Writers of small DICOM files for tests: WSI series (one file per level, TILED_FULL or TILED_SPARSE,
any of the transfer syntaxes below), plain non-WSI images, and a ZIP of a series.

Encoders: pydicom (native, deflated, RLE) and imagecodecs (JPEG baseline, JPEG-LS, JPEG 2000).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence

WSI_SOP_CLASS = dcm_uid.UID("1.2.840.10008.5.1.4.1.1.77.1.6")
SECONDARY_CAPTURE = dcm_uid.UID("1.2.840.10008.5.1.4.1.1.7")

#: short name -> transfer syntax the writers support
SYNTAXES: dict[str, dcm_uid.UID] = {
    "explicit": dcm_uid.ExplicitVRLittleEndian,
    "deflated": dcm_uid.DeflatedExplicitVRLittleEndian,
    "rle": dcm_uid.RLELossless,
    "jpeg": dcm_uid.JPEGBaseline8Bit,
    "jpegls": dcm_uid.JPEGLSLossless,
    "j2k": dcm_uid.JPEG2000Lossless,
}
LOSSLESS = frozenset({"explicit", "deflated", "rle", "jpegls", "j2k"})


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level images: level 0 = image, each next one a 2x2 box average (odd edges dropped)."""
    out = [image]
    for _ in range(levels - 1):
        prev = out[-1].astype(np.uint16)
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        blocks = prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3)
        out.append(((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    return out


def _photometric(syntax: str) -> str:
    return {"jpeg": "YBR_FULL_422", "j2k": "YBR_RCT"}.get(syntax, "RGB")


def _encode(frames: list[np.ndarray], syntax: str) -> bytes:
    import imagecodecs

    if syntax in ("explicit", "deflated"):
        data = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
        return data + (b"\x00" if len(data) % 2 else b"")
    encoded: list[bytes] = []
    for f in frames:
        f = np.ascontiguousarray(f)
        if syntax == "rle":
            from pydicom.pixels.encoders.base import RLELosslessEncoder

            encoded.append(RLELosslessEncoder.encode(
                f, rows=f.shape[0], columns=f.shape[1], samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                pixel_representation=0, photometric_interpretation="RGB", number_of_frames=1,
                planar_configuration=0))
        elif syntax == "jpeg":
            encoded.append(bytes(imagecodecs.jpeg8_encode(f, level=95)))
        elif syntax == "jpegls":
            encoded.append(bytes(imagecodecs.jpegls_encode(f, level=0)))
        elif syntax == "j2k":
            encoded.append(bytes(imagecodecs.jpeg2k_encode(f, level=0, codecformat="J2K", reversible=True,
                                                           mct=True)))
        else:
            raise ValueError(f"unknown syntax {syntax!r}; one of {sorted(SYNTAXES)}")
    return encapsulate(encoded, has_bot=True)


def _base_dataset(sop_class: dcm_uid.UID, syntax: str, study: str, series: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = dcm_uid.generate_uid()
    meta.TransferSyntaxUID = SYNTAXES[syntax]
    meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Manufacturer = "scanbridge"
    ds.ManufacturerModelName = "dicom_synth"
    ds.PatientName = "Synthetic^Slide"
    ds.PatientID = "SYNTH"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = _photometric(syntax)
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if syntax == "jpeg":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    return ds


def _save(ds: Dataset, pixel_data: bytes, syntax: str, path: Path) -> Path:
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    if syntax not in ("explicit", "deflated"):
        ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _tiles(image: np.ndarray, tile: int) -> list[tuple[int, int, np.ndarray]]:
    """(x, y, tile) row-major; edge tiles padded with white to the full tile size."""
    h, w = image.shape[:2]
    out = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, dtype=np.uint8)
            part = image[y:y + tile, x:x + tile]
            t[:part.shape[0], :part.shape[1]] = part
            out.append((x, y, t))
    return out


def _wsi_instance(image: np.ndarray, *, syntax: str, tile: int, flavor: str, spacing_mm: float,
                  study: str, series: str, number: int, sparse: bool, objective: float | None) -> Dataset:
    ds = _base_dataset(WSI_SOP_CLASS, syntax, study, series)
    derived = "ORIGINAL" if flavor == "VOLUME" and number == 1 else "DERIVED"
    ds.ImageType = [derived, "PRIMARY", flavor, "NONE" if number == 1 else "RESAMPLED"]
    ds.Modality = "SM"
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = study
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.ContainerIdentifier = "SLIDE_1"
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence([])
    slide = Dataset()  # ContainerTypeCodeSequence (Type 2 in the Specimen macro): a microscope slide
    slide.CodeValue, slide.CodingSchemeDesignator, slide.CodeMeaning = "433466003", "SCT", "Microscope slide"
    ds.ContainerTypeCodeSequence = DicomSequence([slide])
    ds.VolumetricProperties = "VOLUME"
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    h, w = image.shape[:2]
    ds.TotalPixelMatrixColumns = w
    ds.TotalPixelMatrixRows = h
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = w * spacing_mm
    ds.ImagedVolumeHeight = h * spacing_mm
    ds.ImagedVolumeDepth = 0.0
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 0
    origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    if objective:
        optical.ObjectiveLensPower = objective
    ds.OpticalPathSequence = DicomSequence([optical])
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing_mm:.10g}", f"{spacing_mm:.10g}"]
    measures.SliceThickness = 0
    frame_type = Dataset()
    frame_type.FrameType = list(ds.ImageType)
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.WholeSlideMicroscopyImageFrameTypeSequence = DicomSequence([frame_type])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    tiles = _tiles(image, tile)
    if sparse:
        # drop all-white tiles and store the rest in reverse order: positions, not order, place them
        tiles = [t for t in tiles if not (t[2] == 255).all()][::-1]
        ds.DimensionOrganizationType = "TILED_SPARSE"
        per_frame = []
        for x, y, _ in tiles:
            pos = Dataset()
            pos.ColumnPositionInTotalImagePixelMatrix = x + 1
            pos.RowPositionInTotalImagePixelMatrix = y + 1
            pos.XOffsetInSlideCoordinateSystem = f"{y * spacing_mm:.10g}"
            pos.YOffsetInSlideCoordinateSystem = f"{x * spacing_mm:.10g}"
            pos.ZOffsetInSlideCoordinateSystem = 0
            item = Dataset()
            item.PlanePositionSlideSequence = DicomSequence([pos])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    else:
        ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows = tile
    ds.Columns = tile
    ds.NumberOfFrames = len(tiles)
    ds.PixelData = _encode([t[2] for t in tiles], syntax)
    return ds


def write_wsi_series(image: np.ndarray, out_dir: Path, *, syntax: str = "explicit", levels: int = 2,
                     tile: int = 64, sparse: bool = False, mpp: float = 0.5, objective: float | None = 20.0,
                     thumbnail: bool = True, label: np.ndarray | None = None,
                     names: str = "level-{n}.dcm") -> list[Path]:
    """Write a VL Whole Slide Microscopy series: one file per level (2x pyramid), a thumbnail, a label."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be RGB uint8 (h, w, 3)")
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; one of {sorted(SYNTAXES)}")
    study, series = dcm_uid.generate_uid(), dcm_uid.generate_uid()
    paths: list[Path] = []
    number = 0
    for level, img in enumerate(pyramid(image, levels)):
        number += 1
        ds = _wsi_instance(img, syntax=syntax, tile=tile, flavor="VOLUME", spacing_mm=mpp * 2**level / 1000.0,
                           study=study, series=series, number=number, sparse=sparse, objective=objective)
        paths.append(_save(ds, ds.PixelData, syntax, out_dir / names.format(n=number - 1)))
    extras: list[tuple[str, np.ndarray]] = []
    if thumbnail:
        extras.append(("THUMBNAIL", pyramid(image, levels + 1)[-1]))
    if label is not None:
        extras.append(("LABEL", label))
    for flavor, img in extras:
        number += 1
        size = max(img.shape[:2])
        ds = _wsi_instance(img, syntax="explicit", tile=size, flavor=flavor, spacing_mm=mpp / 1000.0,
                           study=study, series=series, number=number, sparse=False, objective=objective)
        paths.append(_save(ds, ds.PixelData, "explicit", out_dir / names.format(n=number - 1)))
    return paths


def write_plain_dicom(image: np.ndarray, path: Path, *, syntax: str = "explicit",
                      pixel_spacing_mm: float | None = None, frames: int = 1) -> Path:
    """Write a non-WSI (Secondary Capture) RGB image, optionally multi-frame (the image repeated)."""
    ds = _base_dataset(SECONDARY_CAPTURE, syntax, dcm_uid.generate_uid(), dcm_uid.generate_uid())
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = image.shape[:2]
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_spacing_mm:
        ds.PixelSpacing = [f"{pixel_spacing_mm:.10g}", f"{pixel_spacing_mm:.10g}"]
    return _save(ds, _encode([image] * frames, syntax), syntax, path)


def zip_files(paths: Sequence[Path], zip_path: Path, *, folder: str = "series/") -> Path:
    """Pack files into a ZIP (deflated) under `folder`, with names that say nothing about their format."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, p in enumerate(paths):
            zf.write(p, f"{folder}{i:04d}")
    return zip_path
