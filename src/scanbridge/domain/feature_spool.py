"""GeoJSON features written once, as JSON text, to a spooled temporary file (issue #17 item 5).

An object model's scan result can hold 100k+ features; as Python dicts each costs 1-5 kB, as JSON text
about 1 kB, on disk nothing. `FeatureSpool` takes features one by one (`json.dumps` each, one per line)
and gives them back as text (`array_chunks`: the bytes of the JSON array exactly as `json.dumps` writes
it) or one dict at a time (`__iter__`). `StreamedScanResult` is a ScanResult whose features live in a
spool: `result_json_chunks` writes its stored/posted JSON without building the features' dicts, the
artifacts read its features one at a time (`result_features`), and reading `.geojson` (or `model_dump`)
still gives the whole FeatureCollection, built on demand (the CLI, `/v1/infer`).
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from pydantic import PrivateAttr

from scanbridge.domain.geojson import FeatureSource
from scanbridge.domain.results import ScanResult

SPOOL_MEMORY_BYTES = 1 << 20  # up to 1 MiB of feature text stays in memory, the rest goes to a temporary file
_CHUNK = 1 << 16


class FeatureSpool:
    """Append-only GeoJSON features as JSON text (one line each); re-iterable, safe to read from threads."""

    def __init__(self, max_memory: int = SPOOL_MEMORY_BYTES) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory, mode="w+b")  # noqa: SIM115 - owned here
        self._lock = threading.Lock()
        self._end = 0
        self.count = 0

    def append(self, feature: dict[str, Any]) -> None:
        """Write one feature (json.dumps, default separators: the same text json.dumps of the whole writes)."""
        line = json.dumps(feature).encode() + b"\n"
        with self._lock:
            self._file.seek(self._end)
            self._file.write(line)
            self._end += len(line)
            self.count += 1

    def __len__(self) -> int:
        return self.count

    def _lines(self) -> Iterator[bytes]:
        pos = 0
        while True:
            with self._lock:
                if pos >= self._end:
                    return
                self._file.seek(pos)
                line = self._file.readline()
                pos = self._file.tell()
            yield line

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Each feature as a dict, in the order written (one dict alive at a time)."""
        for line in self._lines():
            yield json.loads(line)

    def array_chunks(self) -> Iterator[bytes]:
        """The features as a JSON array, in chunks: b"[" f1 b", " f2 ... b"]" (what json.dumps(list) writes)."""
        out = bytearray(b"[")
        for i, line in enumerate(self._lines()):
            if i:
                out += b", "
            out += line[:-1]
            if len(out) >= _CHUNK:
                yield bytes(out)
                out.clear()
        out += b"]"
        yield bytes(out)

    def close(self) -> None:
        """Remove the temporary file."""
        self._file.close()


class StreamedScanResult(ScanResult):
    """A ScanResult whose GeoJSON features are in a FeatureSpool; `geojson` is built from it when read."""

    _spool: FeatureSpool | None = PrivateAttr(default=None)

    @classmethod
    def from_spool(cls, scan_id: str, results: dict[str, Any] | None, spool: FeatureSpool) -> StreamedScanResult:
        """A result with a FeatureCollection of the spool's features."""
        out = cls(scanId=scan_id, results=results, geojson=None)
        out._spool = spool
        return out

    @property
    def spool(self) -> FeatureSpool | None:
        """The features' spool (None once `geojson` was set explicitly)."""
        return self._spool if self.__dict__.get("geojson") is None else None

    def __getattribute__(self, name: str) -> Any:
        if name == "geojson":
            spool = object.__getattribute__(self, "spool")
            if spool is not None:
                return {"type": "FeatureCollection", "features": list(spool)}
        return super().__getattribute__(name)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """As ScanResult's, with the spooled FeatureCollection in its place (built in memory)."""
        out = super().model_dump(**kwargs)
        spool = self.spool
        if spool is None or not _included("geojson", kwargs):
            return out
        ordered: dict[str, Any] = {}
        for key in ScanResult.model_fields:
            if key == "geojson":
                ordered[key] = {"type": "FeatureCollection", "features": list(spool)}
            elif key in out:
                ordered[key] = out[key]
        return ordered


def result_features(result: ScanResult) -> FeatureSource:
    """Where a result's features are read from, one at a time (`geojson.features`): a streamed result's
    spool (never built whole), else its FeatureCollection."""
    spool = result.spool if isinstance(result, StreamedScanResult) else None
    return spool if spool is not None else result.geojson


def _included(name: str, kwargs: dict[str, Any]) -> bool:
    include, exclude = kwargs.get("include"), kwargs.get("exclude")
    return (include is None or name in include) and (exclude is None or name not in exclude)


def result_json_chunks(result: ScanResult) -> Iterator[bytes]:
    """The bytes of `json.dumps(result.model_dump(mode="json", exclude_none=True))`, in chunks; a streamed
    result's features are copied from its spool as text, never built as dicts."""
    spool = result.spool if isinstance(result, StreamedScanResult) else None
    if spool is None:
        yield json.dumps(result.model_dump(mode="json", exclude_none=True)).encode()
        return
    marker = "\x00scanbridge-features\x00"
    head = ScanResult.model_dump(result, mode="json", exclude_none=True)
    body: dict[str, Any] = {}
    for key in ScanResult.model_fields:
        if key == "geojson":
            body[key] = {"type": "FeatureCollection", "features": marker}
        elif key in head:
            body[key] = head[key]
    before, after = json.dumps(body).encode().split(json.dumps(marker).encode())
    yield before
    yield from spool.array_chunks()
    yield after


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def stored_result_head(raw: bytes) -> ScanResult | None:
    """The `scanId` and `results` of a stored result.json, read up to its `geojson` (never parsed: its
    features stay text) -- what the results step needs of a scan besides the text it posts as it is.

    `result_json_chunks` writes the fields in ScanResult's order (scanId, results, geojson, qcFailReasons);
    None when the text is laid out otherwise (no scanId and results before geojson): parse it whole then.
    """
    text = raw.decode()
    head: dict[str, Any] = {}
    pos = _skip(text, 0)
    if text[pos:pos + 1] != "{":
        return None
    pos += 1
    while True:
        pos = _skip(text, pos)
        if text[pos:pos + 1] != '"':
            return None
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos:pos + 1] != ":" or key not in ScanResult.model_fields:
            return None
        if key == "geojson":
            break
        head[key], pos = _DECODER.raw_decode(text, _skip(text, pos + 1))
        pos = _skip(text, pos)
        if text[pos:pos + 1] != ",":
            break  # the end of the object: a result without geojson
        pos += 1
    if "scanId" not in head or "results" not in head:
        return None
    return ScanResult.model_validate(head)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def result_json_bytes(result: ScanResult) -> bytes:
    """`result_json_chunks` joined: the JSON text of the result (its peak is the text, not the dicts)."""
    return b"".join(result_json_chunks(result))
