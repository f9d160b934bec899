"""Instance decoders (segmentation / detection kinds): one per `spec.decoder`, each turning a batch of
tile outputs into objects in window pixels. Filled in by the bring-your-own-model work (issue #13)."""

from __future__ import annotations

import numpy as np

from scanbridge.domain.models import ModelSpec


def output_problems(spec: ModelSpec, outputs: dict[str, np.ndarray]) -> list[str]:
    """What stops `spec`'s instance decoder from decoding these dry-run outputs (by output name); [] if none."""
    return []
