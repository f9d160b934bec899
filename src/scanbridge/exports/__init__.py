"""One scan's results as files, each drawn from its level-0 GeoJSON (exactly what was posted).

| module | makes | needs |
|---|---|---|
| `csv.py` | `objects.csv` / the `csv` export: one row per object | stdlib (the API Lambda serves it) |
| `raster.py` | the one rasteriser (polygons -> label mask): `labels.npy`, the SEG planes, crop alphas, evaluation | numpy |
| `dicom.py` | DICOM ANN, SEG and (SVS/TIFF) the synthetic source they reference | highdicom, pydicom, numpy |
| `overlay.py` | `overlay.png`: the thumbnail with the results drawn (worker artifacts, MHS debug ZIP) | numpy, Pillow |
| `crops.py` | `crops.zip`: RGBA crops of cells / nuclei | numpy, Pillow, a ScanReader |

Each writer reads a `geojson.FeatureSource` (a FeatureCollection, or a streamed result's spool: the
features one at a time, never a list of them) and writes into a binary file (`write_overlay`,
`write_csv`, `write_cell_crops`, `write_dicom`, `raster.write_npy`); `render_overlay` gives the overlay as
bytes. `services/exports.py` serves them through the API (from the stored result.json's text, a feature at a
time: `domain.feature_spool.StoredResult`);
`services/artifacts.py` stores them per scan. Modules that need numpy are imported only where they are
used: the API Lambda's layer has none.
"""

from __future__ import annotations

from scanbridge.domain.storage_keys import ANNOTATIONS_DCM, SEGMENTATION_DCM, SOURCE_DCM

FORMATS: dict[str, tuple[str, str]] = {  # format -> (media type, file suffix)
    "geojson": ("application/geo+json", "geojson"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "dicom-ann": ("application/dicom", "ann.dcm"),
    "dicom-seg": ("application/dicom", "seg.dcm"),
    "dicom-source": ("application/dicom", "source.dcm"),  # SVS/TIFF only: the synthetic source the others reference
}
#: the artifact file a DICOM export is stored under (services/artifacts.py writes them)
DICOM_ARTIFACTS = {"dicom-ann": ANNOTATIONS_DCM, "dicom-seg": SEGMENTATION_DCM, "dicom-source": SOURCE_DCM}
