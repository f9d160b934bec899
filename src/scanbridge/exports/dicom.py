"""DICOM exports of one scan's results: Microscopy Bulk Simple Annotations (ANN), a BINARY Segmentation
(SEG) and, for SVS/TIFF scans, the synthetic VL Whole Slide Microscopy source both reference.

A DICOM source scan's key attributes (UIDs, patient, study, specimen, frame of reference, pixel
geometry) are kept in the scan's `metadata.json` under `dicom_source`, so the exports reference it.
A scan from SVS/TIFF gets a minimal synthetic VL Whole Slide Microscopy source (the scan's size and
pixel spacing; UIDs derived from the scan id and size, so the ANN and the SEG of one scan share one
study, series, frame of reference and source instance) that is not itself stored anywhere.

Both exports are checked with dicom3tools (`dciodvfy`, `dcentvfy`; tests/integration/
test_dicom_validation.py): text with non-ASCII characters ("µm") is written under Specific Character
Set ISO_IR 192 (UTF-8), the synthetic source is a slide container (ContainerTypeCodeSequence), and an
annotation set with no findings holds one "no findings" group outlining the analysed scan (an ANN
needs at least one group). highdicom, pydicom and numpy are imported inside the functions: the API
side imports this module only to build a missing export where they are installed.

The features are read once, one at a time. What is held until the file is written (highdicom builds an
instance whole): for the ANN each annotation's coordinates (a float64 array) and measurements (a float64
column per name), for the SEG one uint8 plane per polygon class (docs/artifacts.md).
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from scanbridge import __version__
from scanbridge.domain import geojson as gj
from scanbridge.domain.errors import NotFoundError
from scanbridge.exports.csv import object_features

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_PRIVATE_SCHEME = "99SCANBRIDGE"


def dicom_header_json(ds: Dataset) -> dict[str, Any]:
    """A source DICOM header as DICOM JSON, without pixel data, per-frame groups or binary values."""
    from pydicom.dataset import Dataset as PydicomDataset

    drop = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence",
            "ICCProfile", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"}

    def clean(src: Any) -> Any:
        dst = PydicomDataset()
        for elem in src:
            if elem.keyword in drop or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag.is_private:
                continue
            if elem.VR == "SQ":
                dst.add_new(elem.tag, "SQ", [clean(item) for item in elem.value])
            else:
                dst.add_new(elem.tag, elem.VR, elem.value)
        return dst

    data: dict[str, Any] = clean(ds).to_json_dict()
    return data


def _uid(*entropy: str) -> str:
    """A new UID; the same one for the same `entropy` when given."""
    if entropy:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=["scanbridge", *entropy]))
    from highdicom import UID

    return str(UID())


def _slide_container() -> Any:
    """ContainerTypeCodeSequence (Type 2 in the Specimen macro): a microscope slide."""
    from pydicom.dataset import Dataset as PydicomDataset

    item = PydicomDataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "433466003", "SCT", "Microscope slide"
    return [item]


def source_dataset(metadata: dict[str, Any], scan_id: str) -> Dataset:
    """The scan's source image header: the stored DICOM one, or a minimal synthetic VL WSI for SVS/TIFF."""
    from pydicom.dataset import Dataset as PydicomDataset

    stored = metadata.get("dicom_source")
    if stored:
        ds = PydicomDataset.from_json(stored)
        if "FrameOfReferenceUID" in ds and "TotalPixelMatrixRows" in ds:
            if "ContainerTypeCodeSequence" not in ds:
                ds.ContainerTypeCodeSequence = []  # Type 2: present, maybe empty
            return ds
    width, height = int(metadata["width"]), int(metadata["height"])
    mpp_x = float(metadata.get("mpp_x") or 1.0)
    mpp_y = float(metadata.get("mpp_y") or mpp_x)
    tile = 256
    key = (scan_id, f"{width}x{height}", str(metadata.get("format") or ""))
    ds = PydicomDataset()
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = _uid("instance", *key)
    ds.StudyInstanceUID = _uid("study", *key)
    ds.SeriesInstanceUID = _uid("series", *key)
    ds.FrameOfReferenceUID = _uid("frame-of-reference", *key)
    ds.Modality = "SM"
    ds.PatientID = ""
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = ""
    ds.StudyID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.ContainerIdentifier = scan_id[:64] or "scan"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = _slide_container()
    specimen = PydicomDataset()
    specimen.SpecimenIdentifier = scan_id[:64] or "scan"
    specimen.SpecimenUID = _uid("specimen", *key)
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows = min(tile, height)
    ds.Columns = min(tile, width)
    ds.TotalPixelMatrixRows = height
    ds.TotalPixelMatrixColumns = width
    ds.NumberOfFrames = math.ceil(height / ds.Rows) * math.ceil(width / ds.Columns)
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]
    origin = PydicomDataset()
    origin.XOffsetInSlideCoordinateSystem = 0.0
    origin.YOffsetInSlideCoordinateSystem = 0.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.ImagedVolumeWidth = width * mpp_x / 1000.0
    ds.ImagedVolumeHeight = height * mpp_y / 1000.0
    ds.ImagedVolumeDepth = 0.001
    measures = PydicomDataset()
    measures.PixelSpacing = [mpp_y / 1000.0, mpp_x / 1000.0]  # mm, (row spacing, column spacing)
    measures.SliceThickness = 0.001
    shared = PydicomDataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def _coded(name: str) -> Any:
    from pydicom.sr.coding import Code

    text = name.lower().replace("µ", "u").replace("^2", "2")
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in text).strip("-")[:16] or "value"
    return Code(slug, _PRIVATE_SCHEME, name[:64])


def _unit(name: str) -> Any:
    from pydicom.sr.coding import Code

    n = name.lower()
    for suffix, code, meaning in (("µm^2", "um2", "square micrometer"), ("mm^2", "mm2", "square millimeter"),
                                  ("px^2", "{pixels}", "pixels"), ("µm", "um", "micrometer"),
                                  ("px", "{pixels}", "pixels"), ("deg", "deg", "degree")):
        if n.endswith(suffix.lower()):
            return Code(code, "UCUM", meaning)
    return Code("1", "UCUM", "no units")


def _property_codes(name: str) -> tuple[Any, Any]:
    """(category, type) codes for a class: SCT's cell nucleus / tissue where they fit, else private."""
    from pydicom.sr.coding import Code

    n = name.lower()
    if "nucle" in n or n in ("positive", "negative"):
        return Code("91723000", "SCT", "Anatomical Structure"), Code("84640000", "SCT", "Nucleus")
    if "cell" in n:
        return Code("91723000", "SCT", "Anatomical Structure"), Code("4421005", "SCT", "Cell")
    if "tissue" in n:
        return Code("91723000", "SCT", "Anatomical Structure"), Code("85756007", "SCT", "Tissue")
    return Code("91723000", "SCT", "Anatomical Structure"), _coded(name)


def _algorithm(model: dict[str, Any]) -> Any:
    import highdicom as hd

    return hd.AlgorithmIdentificationSequence(
        name=str(model.get("name") or "scanbridge"), version=str(model.get("version") or __version__),
        family=hd.sr.CodedConcept("123109", "DCM", "Diagnostic Imaging Report"))


@dataclass
class _Group:
    """One ANN group as highdicom takes it, gathered one annotation at a time: each annotation's
    coordinates as a small float64 array, each measurement as a column of float64 values (NaN where an
    annotation has none), in the order the names were met."""

    label: str
    graphic_type: str  # POLYGON or POINT
    coords: list[Any] = field(default_factory=list)  # one (n, 2) float64 array per annotation
    columns: dict[str, array[float]] = field(default_factory=dict)

    def add(self, coords: Sequence[Sequence[float]], measurements: dict[str, float]) -> None:
        """Append one annotation and its measurements."""
        import numpy as np

        n = len(self.coords)
        self.coords.append(np.asarray(coords, dtype=np.float64))
        for name, value in measurements.items():
            if name not in self.columns:
                self.columns[name] = array("d", [math.nan]) * n
            self.columns[name].append(value)
        for column in self.columns.values():
            if len(column) == n:
                column.append(math.nan)


def annotation_groups(source: gj.FeatureSource) -> list[_Group]:
    """The features (read once, one at a time) as ANN groups: one per (class, POLYGON|POINT), heat map
    contours one group per level."""
    groups: dict[tuple[str, str], _Group] = {}

    def group(label: str, kind: str) -> _Group:
        return groups.setdefault((label, kind), _Group(label, kind))

    for f in gj.features(source):
        props = gj.properties(f)
        geometry = gj.geometry(f)
        measurements = {k: float(v) for k, v in (props.get("measurements") or {}).items()
                        if isinstance(v, (int, float))}
        if gj.is_heatmap(f):
            levels = props.get("contour_levels") or []
            for lv, g in gj.heatmap_parts(f):
                name = f"heatmap >= {levels[lv]}" if lv < len(levels) else f"heatmap level {lv}"
                for ring in gj.exteriors(g):
                    group(name, "POLYGON").add(_open_ring(ring), {})
            continue
        for ring in gj.exteriors(geometry):
            group(gj.class_name(f), "POLYGON").add(_open_ring(ring), measurements)
        for pt in gj.points(geometry):
            group(gj.class_name(f), "POINT").add([pt], measurements)
    return [g for g in groups.values() if g.coords]


def _open_ring(ring: list[list[float]]) -> list[list[float]]:
    """DICOM POLYGONs are implicitly closed: drop GeoJSON's repeated last point."""
    return ring[:-1] if len(ring) > 1 and ring[0] == ring[-1] else list(ring)


def annotations_dataset(source_features: gj.FeatureSource, source: Dataset, *, model: dict[str, Any],
                        scan_id: str) -> Dataset:
    """A DICOM Microscopy Bulk Simple Annotations instance (2D, level-0 pixel coordinates) of the features."""
    import highdicom as hd
    import numpy as np

    groups = []
    found = annotation_groups(source_features)
    if not found:  # an ANN needs one group: the analysed scan's outline, labelled as having no findings
        w, h = float(source.TotalPixelMatrixColumns), float(source.TotalPixelMatrixRows)
        outline = _Group("no findings", "POLYGON")
        outline.add([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], {})
        found = [outline]
    for number, g in enumerate(found, start=1):
        category, prop_type = _property_codes(g.label)
        measurements = [hd.ann.Measurements(name=_coded(n), unit=_unit(n), values=np.asarray(column))
                        for n, column in g.columns.items()]
        groups.append(hd.ann.AnnotationGroup(
            number=number, uid=hd.UID(), label=g.label[:64], annotated_property_category=category,
            annotated_property_type=prop_type, graphic_type=g.graphic_type, graphic_data=g.coords,
            algorithm_type="AUTOMATIC", algorithm_identification=_algorithm(model),
            measurements=measurements or None, description=f"{len(g.coords)} {g.label} from scanbridge"))
    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source], annotation_coordinate_type="2D", annotation_groups=groups,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="scanbridge", manufacturer_model_name=str(model.get("name") or "scanbridge")[:64],
        software_versions=__version__, device_serial_number="0",
        content_description=f"scanbridge results of scan {scan_id}"[:64], content_label="SCANBRIDGE_ANN")


def segmentation_dataset(source_features: gj.FeatureSource, source: Dataset, *, model: dict[str, Any],
                         scan_id: str) -> Dataset:
    """A tiled (TILED_FULL) BINARY DICOM SEG, one segment per polygon class, at a power-of-two downsample.

    The features are read once, one at a time, each drawn into its class's plane (made when the class is
    first met); highdicom takes the planes whole."""
    import highdicom as hd
    import numpy as np

    from scanbridge.exports.raster import MaskFiller, seg_downsample

    width, height = int(source.TotalPixelMatrixColumns), int(source.TotalPixelMatrixRows)
    d = seg_downsample(width, height)
    size = (math.ceil(width / d), math.ceil(height / d))
    planes: dict[str, np.ndarray] = {}
    fillers: dict[str, MaskFiller] = {}
    for f in object_features(source_features):
        if gj.geometry_type(f) in gj.POLYGONAL:
            name = gj.class_name(f)
            if name not in planes:
                planes[name] = np.zeros((size[1], size[0]), dtype=np.uint8)
                fillers[name] = MaskFiller(planes[name], downsample=d)
            fillers[name].add(gj.polygons(gj.geometry(f)), 1)
    for filler in fillers.values():
        filler.flush()
    if not planes:
        planes["no findings"] = np.zeros((size[1], size[0]), dtype=np.uint8)
    classes = list(planes)
    pixels = np.stack([planes.pop(name) for name in classes], axis=-1)[None]
    descriptions = []
    for i, name in enumerate(classes, start=1):
        category, prop_type = _property_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=prop_type, algorithm_type="AUTOMATIC",
            algorithm_identification=_algorithm(model)))
    shared = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    row_mm, col_mm = (float(v) for v in shared.PixelSpacing)
    origin = source.TotalPixelMatrixOriginSequence[0]
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="scanbridge",
        manufacturer_model_name=str(model.get("name") or "scanbridge")[:64], software_versions=__version__,
        device_serial_number="0", content_description=f"scanbridge segmentation of scan {scan_id}"[:64],
        content_label="SCANBRIDGE_SEG",
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=(row_mm * d, col_mm * d),
                                                slice_thickness=float(shared.get("SliceThickness") or 0.001)),
        plane_orientation=hd.PlaneOrientationSequence(coordinate_system="SLIDE",
                                                      image_orientation=list(source.ImageOrientationSlide)),
        plane_positions=[hd.PlanePositionSequence(
            coordinate_system="SLIDE", image_position=(float(origin.XOffsetInSlideCoordinateSystem),
                                                       float(origin.YOffsetInSlideCoordinateSystem),
                                                       float(origin.get("ZOffsetInSlideCoordinateSystem") or 0.0)),
            pixel_matrix_position=(1, 1))],
        tile_pixel_array=True, tile_size=(min(256, size[1]), min(256, size[0])),
        dimension_organization_type="TILED_FULL", omit_empty_frames=False)


def _non_ascii_text(ds: Dataset) -> bool:
    """Whether any text value of the dataset (nested ones included) holds a non-ASCII character."""
    for elem in ds.iterall():
        if elem.VR in ("SH", "LO", "ST", "LT", "UT", "UC", "PN") and elem.value is not None:
            values = elem.value if isinstance(elem.value, (list, tuple)) or elem.VM > 1 else [elem.value]
            if any(not str(v).isascii() for v in values):
                return True
    return False


SOURCE_TILE = 4096  # px: the synthetic source instance's frame size (a 100k x 80k scan: 500 frames)


@functools.lru_cache(maxsize=4)
def blank_frame(rows: int, cols: int) -> bytes:
    """A white rows x cols RGB frame as lossless JPEG-LS (a few hundred bytes), made once per process:
    making it takes the frame's pixels and the encoder's output buffer (96 MiB for 4096², the artifact
    step's largest allocation), so the warm worker server makes the 4096² one before it forks."""
    import imagecodecs
    import numpy as np

    return bytes(imagecodecs.jpegls_encode(np.full((rows, cols, 3), 255, dtype=np.uint8), level=0))


def source_instance(source: Dataset) -> Dataset:
    """The synthetic source itself as a VL Whole Slide Microscopy instance, so that the exports' references
    resolve (dcentvfy): the scan's geometry and UIDs, TILED_FULL, blank (white) pixels, every frame the
    same few hundred bytes of JPEG-LS (the scan's pixels stay in the SVS/TIFF)."""
    import datetime

    from PIL import ImageCms
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = PydicomDataset()
    ds.update(source)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGLSLossless
    ds.file_meta = meta
    now = datetime.datetime.now(datetime.UTC)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.InstanceNumber, ds.SeriesNumber = 1, 1
    ds.Manufacturer, ds.ManufacturerModelName = "scanbridge", "synthetic source"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", __version__
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.VolumetricProperties, ds.BurnedInAnnotation, ds.SpecimenLabelInImage = "VOLUME", "NO", "NO"
    ds.FocusMethod, ds.ExtendedDepthOfField, ds.LossyImageCompression = "AUTO", "NO", "00"
    ds.PlanarConfiguration = 0
    ds.AcquisitionContextSequence = []
    ds.NumberOfOpticalPaths = 1
    optical = PydicomDataset()
    optical.OpticalPathIdentifier = "1"
    illumination = PydicomDataset()
    illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
    illumination.CodeMeaning = "Brightfield illumination"
    optical.IlluminationTypeCodeSequence = [illumination]
    colour = PydicomDataset()
    colour.CodeValue, colour.CodingSchemeDesignator, colour.CodeMeaning = "414298005", "SCT", "Full Spectrum"
    optical.IlluminationColorCodeSequence = [colour]
    optical.ICCProfile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ds.OpticalPathSequence = [optical]
    organisation = _uid("dimensions", str(ds.SOPInstanceUID))
    item = PydicomDataset()
    item.DimensionOrganizationUID = organisation
    ds.DimensionOrganizationSequence = [item]
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    cols, rows = min(SOURCE_TILE, width), min(SOURCE_TILE, height)
    ds.Rows, ds.Columns = rows, cols
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.NumberOfFrames = math.ceil(width / cols) * math.ceil(height / rows)
    frame_type = PydicomDataset()
    frame_type.FrameType = list(ds.ImageType)
    path_id = PydicomDataset()
    path_id.OpticalPathIdentifier = "1"
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    shared.OpticalPathIdentificationSequence = [path_id]
    ds.PixelData = encapsulate([blank_frame(rows, cols)] * int(ds.NumberOfFrames), has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _save(ds: Dataset, out: IO[bytes]) -> None:
    if _non_ascii_text(ds):  # e.g. "Area µm^2": written as UTF-8 under ISO_IR 192, not as a bare 0xB5
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.save_as(out, enforce_file_format=True)


def write_dicom(out: IO[bytes], fmt: str, features: gj.FeatureSource, metadata: dict[str, Any], scan_id: str, *,
                model: dict[str, Any]) -> None:
    """The `dicom-ann`, `dicom-seg` or (SVS/TIFF) `dicom-source` export of one scan's features (read once,
    one at a time) and metadata, written into `out`; `model` is the result's `results.model`."""
    source = source_dataset(metadata, scan_id)
    if fmt == "dicom-source":
        if metadata.get("dicom_source"):
            raise NotFoundError(f"scan {scan_id!r} is DICOM: its own files are the source the exports reference")
        _save(source_instance(source), out)
        return
    build = annotations_dataset if fmt == "dicom-ann" else segmentation_dataset
    _save(build(features, source, model=model, scan_id=scan_id), out)
