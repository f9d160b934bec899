"""`scanbridge run-scan` on a generated slide: GeoJSON QuPath imports, the summary, the artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape
from shapely.ops import unary_union

from scanbridge.devtools import synth
from scanbridge.domain.results import geojson_problems, qupath_problems
from scanbridge.entrypoints.cli import main
from tests.conftest import fixture_path


def test_run_scan_writes_geojson_summary_and_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a generated 3072x2048 slide with 20 % tissue
    slide = tmp_path / "slide.svs"
    truth = synth.make_slide(slide, 3072, 2048, tissue_fraction=0.2, seed=11, mpp=0.5)
    # WHEN run-scan runs the tissue model on it
    code = main(["run-scan", str(slide), "--model", "tissue", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    # THEN it succeeds, shows a progress bar (rich's; off a terminal its last state) that reached every tile,
    assert code == 0
    bar = re.search(r"^slide .*━.* (\d+)/(\d+) tiles", captured.err, re.MULTILINE)
    assert bar and bar.group(1) == bar.group(2) and int(bar.group(2)) > 0, captured.err
    # AND prints the summary
    line = json.loads(captured.out.strip().splitlines()[-1])
    assert line["summary"]["Tissue regions"] != "0"
    # AND the GeoJSON follows the platform's and QuPath's rules and covers the true tissue
    fc = json.loads((tmp_path / "out" / "slide.geojson").read_text())
    assert geojson_problems(fc, 3072, 2048) == [] and qupath_problems(fc) == []
    tissue = unary_union([shape(f["geometry"]) for f in fc["features"]
                          if f["properties"]["annotation_type"] == "tissue"])
    fraction = tissue.area / (3072 * 2048)
    assert abs(fraction - truth.tissue_fraction) < 0.03
    # AND the artifacts are there and readable
    folder = tmp_path / "out" / "slide-artifacts"
    names = {p.name for p in folder.iterdir()}
    assert {"overlay.png", "labels.npy", "objects.csv"} <= names
    assert Image.open(folder / "overlay.png").size[0] > 0
    labels = np.load(folder / "labels.npy")
    assert labels.max() == len([f for f in fc["features"] if f["properties"]["annotation_type"] == "tissue"])


def test_run_scan_reports_an_unreadable_file_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a junk file and a good slide / WHEN both are run / THEN exit 1, the good one still written
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide")
    slide = tmp_path / "ok.svs"
    synth.make_slide(slide, 1024, 1024, tissue_fraction=0.3, seed=2, mpp=1.0, nuclei=False)
    code = main(["run-scan", str(junk), str(slide), "--out", str(tmp_path / "o"), "--no-artifacts"])
    err = capsys.readouterr().err
    assert code == 1 and "SCAN_UNSUPPORTED_FORMAT" in err
    assert (tmp_path / "o" / "ok.geojson").exists() and not (tmp_path / "o" / "ok-artifacts").exists()


def test_dev_subcommands_take_their_options_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN options placed right after a dev subcommand (as the README writes them)
    out = tmp_path / "s.svs"
    # WHEN `scanbridge dev make-slide` gets its options before the positional / THEN they are honoured
    code = main(["dev", "make-slide", "--width", "512", "--height", "384", "--tissue-fraction", "0.2", str(out)])
    assert code == 0 and out.exists()
    from scanbridge.imaging.readers import open_scan

    assert open_scan([out]).metadata.dimensions == (512, 384)
    # AND `dev platform --help` answers with its own usage, not the top-level parser's error
    assert main(["dev", "platform", "--help"]) == 0 and "--send" in capsys.readouterr().out


def _printed(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_a_dicom_series_is_one_scan_given_as_its_folder_or_as_its_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN wsidicomizer's series of real tissue: one DICOM file per level, 4 levels
    folder = fixture_path("thirdparty/wsidicomizer_series")
    levels = sorted(folder.glob("level*.dcm"))
    assert len(levels) == 4
    # WHEN run-scan is given its folder (artifacts too), then its files in another order
    assert main(["run-scan", str(folder), "--out", str(tmp_path / "a")]) == 0
    by_folder = _printed(capsys.readouterr().out)
    shuffled = [levels[2], levels[0], levels[3], levels[1]]
    assert main(["run-scan", *map(str, shuffled), "--out", str(tmp_path / "b"), "--no-artifacts"]) == 0
    by_files = _printed(capsys.readouterr().out)
    # THEN each is one scan of all four files (named after the folder, or the first file given), the same result
    assert [r["file"] for r in by_folder] == [str(folder)] and len(by_folder[0]["files"]) == 4
    assert [r["file"] for r in by_files] == [str(shuffled[0])] and sorted(by_files[0]["files"]) == list(map(str, levels))
    one = json.loads((tmp_path / "a" / "wsidicomizer_series.geojson").read_text())
    other = json.loads((tmp_path / "b" / f"{shuffled[0].stem}.geojson").read_text())
    assert [f["geometry"] for f in one["features"]] == [f["geometry"] for f in other["features"]]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["level2.geojson", "level2.result.json"]
    # AND inspect sees the one 4-level pyramid, not four single levels, also in a folder that holds DICOM
    # objects of other kinds beside it (the annotations and segmentation run-scan wrote)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for source in [*levels, *(tmp_path / "a" / "wsidicomizer_series-artifacts").glob("*.dcm")]:
        (mixed / source.name).write_bytes(source.read_bytes())
    assert {"annotations.dcm", "segmentation.dcm"} <= {p.name for p in mixed.iterdir()}
    assert main(["inspect", str(mixed)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["level_count"] == 4 and info["width"] == 1920 and info["format"] == "dicom-wsi"
    assert len(info["files"]) == 4


def test_a_folder_stands_for_the_scan_files_below_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a folder of two slides (one in a subfolder), a README, a hidden file and a slide of the same name
    # elsewhere; and an empty folder
    slides = tmp_path / "slides"
    (slides / "more").mkdir(parents=True)
    (slides / "a.svs").write_bytes(fixture_path("small.svs").read_bytes())
    (slides / "more" / "b.tiff").write_bytes(fixture_path("boxes.tiff").read_bytes())
    (slides / "README.txt").write_text("two slides")
    (slides / ".a.svs").write_bytes(b"a hidden copy's leftovers")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.svs").write_bytes(fixture_path("small.svs").read_bytes())
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    # WHEN run-scan is given the folder and the other slide
    code = main(["run-scan", str(slides), str(tmp_path / "elsewhere" / "a.svs"), "--out", str(out), "--no-artifacts"])
    printed = _printed(capsys.readouterr().out)
    # THEN each slide is a scan of its own, the README and the hidden file left out, and the second a.svs
    # does not overwrite the first
    assert code == 0
    assert [r["file"] for r in printed] == [str(slides / "a.svs"), str(slides / "more" / "b.tiff"),
                                            str(tmp_path / "elsewhere" / "a.svs")]
    assert sorted(p.name for p in out.glob("*.geojson")) == ["a-2.geojson", "a.geojson", "b.geojson"]
    # AND an empty folder is a scan with no files: a coded error, exit 1
    assert main(["run-scan", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "SCAN_UNSUPPORTED_FORMAT: the scan has no files" in capsys.readouterr().err
