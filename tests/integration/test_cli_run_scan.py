"""`scanbridge run-scan` on a generated slide: GeoJSON QuPath imports, the summary, the artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape
from shapely.ops import unary_union

from scanbridge.devtools import synth
from scanbridge.domain.results import geojson_problems, qupath_problems
from scanbridge.entrypoints.cli import main


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
