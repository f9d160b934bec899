"""The feature spool (domain/feature_spool.py): lines written in blocks, read back in chunks, in order."""

from __future__ import annotations

import json

from scanbridge.domain import feature_spool
from scanbridge.domain.feature_spool import FeatureSpool


def test_features_appended_while_the_spool_is_read_come_back_whole_and_in_order() -> None:
    # GIVEN a spool kept in memory for a few lines only, short features and one longer than a read chunk
    spool = FeatureSpool(max_memory=4096)
    features = [{"type": "Feature", "id": str(i), "properties": {"n": i}} for i in range(3 * feature_spool._PENDING_LINES)]
    features[100]["properties"]["text"] = "x" * (3 * feature_spool._CHUNK)
    half = len(features) // 2
    for f in features[:half]:
        spool.append(f)
    # WHEN it is read part way, more is appended (a block not yet written included), and it is read again
    reading = iter(spool)
    first = [next(reading) for _ in range(10)]
    for f in features[half:]:
        spool.append(f)
    rest = list(reading)
    # THEN every feature comes back once, in order, as text and as dicts, and the count says so
    assert first + rest == features and list(spool) == features and len(spool) == len(features)
    assert b"".join(spool.array_chunks()) == json.dumps(features).encode()
    spool.close()
