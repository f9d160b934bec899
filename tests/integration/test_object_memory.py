"""What the object pipeline holds between batches is its own memory, never onnxruntime's arena (issue #17 item 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanbridge.devtools import synth
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference import objects
from scanbridge.inference.instances import Decoder
from scanbridge.inference.runner import ModelLoader


def test_post_processing_gets_copies_of_the_tile_outputs_not_views_of_the_arena(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The post-processing threads may still hold a tile's outputs while the next batch runs. Were they views
    of the session's outputs, which live in onnxruntime's CPU arena, the arena could not reuse its memory plan
    for that run and grew by a whole plan (a peak ~220 MiB higher in one run out of a few, docs/performance.md)."""
    # GIVEN the built-in nuclei model, whose outputs onnxruntime hands back as numpy views of its arena
    model = ModelLoader(prefer_gpu=False).load("nuclei")
    outputs = model.run(np.full((2, 512, 512, 3), 200, np.uint8))
    assert outputs and not any(out.flags.owndata for out in outputs.values())
    # AND a generated slide with nuclei, and a decoder that records what each tile's post-processing gets
    path = tmp_path / "slide.svs"
    synth.make_slide(path, 1536, 1024, mpp=0.5, tissue_fraction=0.5, seed=4)
    seen: list[dict[str, np.ndarray]] = []
    real = objects.decoder_for

    def recording(*args: Any, **kwargs: Any) -> Decoder:
        decoder = real(*args, **kwargs)
        decode = decoder.decode

        def spy(outputs: dict[str, np.ndarray], keep: Any = None) -> Any:
            seen.append(outputs)
            return decode(outputs, keep)

        decoder.decode = spy  # type: ignore[method-assign]
        return decoder

    monkeypatch.setattr(objects, "decoder_for", recording)
    reader = open_scan([path])
    try:
        tissue = OpenedScan(reader, owned=False).tissue
        # WHEN the object pipeline runs over it in batches of 2 tiles
        run = objects.run_objects(reader, model, tissue.mask, tissue.downsample, batch_size=2)
    finally:
        reader.close()
    # THEN each tile's outputs (probability and stain maps) own their memory: copies, not views of a batch
    assert run.stats.batches >= 2 and len(seen) == run.stats.tiles_processed
    assert all(set(tile) == set(outputs) for tile in seen)
    assert all(out.flags.owndata and out.base is None for tile in seen for out in tile.values())
    # AND the nuclei were still found from them
    assert len(run.objects) > 20
