"""Scan checkpoints in the artifact store: what a retried worker resumes from (inference/resume.py).

Keys: `tasks/{task_id}/scans/{scan_id}/checkpoints/{model}@{version}-{grid hash}/part-NNNNN.npz`
(`domain/storage_keys.py`), one numpy savez_compressed archive per part, read back with
`allow_pickle=False`.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from scanbridge.domain.storage_keys import checkpoint_part_key
from scanbridge.ports import ArtifactStore

log = logging.getLogger(__name__)


class ArtifactCheckpoints:
    """A CheckpointStore for one scan of one task, over the ArtifactStore (S3; moto or memory locally).

    >>> store = ArtifactCheckpoints(artifacts, "tasks/t1/scans/s1/checkpoints/", interval_s=60)
    >>> store.save("tissue@1-ab12", 0, {"cells": cells, "map__tiles": tiles}); store.parts("tissue@1-ab12")
    """

    def __init__(self, artifacts: ArtifactStore, prefix: str, *, interval_s: float) -> None:
        self._artifacts = artifacts
        self._prefix = prefix
        self.interval_s = interval_s

    def _key(self, fingerprint: str, index: int) -> str:
        return checkpoint_part_key(self._prefix, fingerprint, index)

    def parts(self, fingerprint: str) -> list[dict[str, np.ndarray]]:
        """Every stored part of `fingerprint`, in saving order (a grid that changed has none)."""
        keys = sorted(k for k in self._artifacts.list(f"{self._prefix}{fingerprint}/") if k.endswith(".npz"))
        out: list[dict[str, np.ndarray]] = []
        for key in keys:
            raw = self._artifacts.get(key)
            if raw is None:
                continue
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                out.append({name: archive[name] for name in archive.files})
        return out

    def save(self, fingerprint: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store part `index` (compressed)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        self._artifacts.put(self._key(fingerprint, index), buf.getvalue(), "application/x-npz")
        log.info("checkpoint part %d saved (%d bytes)", index, buf.tell())
