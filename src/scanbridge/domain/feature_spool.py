"""GeoJSON features written once, as JSON text, to a spooled temporary file (issue #17 item 5).

An object model's scan result can hold 100k+ features; as Python dicts each costs 1-5 kB, as JSON text
about 1 kB, on disk nothing. `FeatureSpool` takes features one by one (`json.dumps` each, one per line)
and gives them back as text (`array_chunks`: the bytes of the JSON array exactly as `json.dumps` writes
it) or one dict at a time (`__iter__`). `StreamedScanResult` is a ScanResult whose features live in a
spool: `result_json_chunks` writes its stored/posted JSON without building the features' dicts, the
artifacts read its features one at a time (`result_features`), `result_geojson_chunks` writes its
FeatureCollection's text (`scanbridge run-scan`), and reading `.geojson` (or `model_dump`) still gives the
whole FeatureCollection, built on demand (`/v1/infer`).

A stored result.json is read back the same way (`StoredResult`: the API's exports): its members are parsed
one by one from the text (`json`'s own `raw_decode`) and its features one at a time, never the whole document.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import PrivateAttr

from scanbridge.domain import geojson as gj
from scanbridge.domain.geojson import FeatureSource
from scanbridge.domain.results import ScanResult

SPOOL_MEMORY_BYTES = 1 << 20  # up to 1 MiB of feature text stays in memory, the rest goes to a temporary file
_CHUNK = 1 << 16
_PENDING_LINES = 256  # appended lines written to the file together (one encode, seek and write per block)


class FeatureSpool:
    """Append-only GeoJSON features as JSON text (one line each); re-iterable, safe to read from threads."""

    def __init__(self, max_memory: int = SPOOL_MEMORY_BYTES) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory, mode="w+b")  # noqa: SIM115 - owned here
        self._lock = threading.Lock()
        self._end = 0
        self._pending: list[str] = []  # appended, not yet in the file
        self.count = 0

    def append(self, feature: dict[str, Any]) -> None:
        """Write one feature (json.dumps, default separators: the same text json.dumps of the whole writes)."""
        self.append_text(json.dumps(feature))

    def append_text(self, text: str) -> None:
        """Write one feature given as the text `json.dumps` writes of it (one line: ASCII, no newline)."""
        with self._lock:
            self._pending.append(text)
            self.count += 1
            if len(self._pending) >= _PENDING_LINES:
                self._write_pending()

    def _write_pending(self) -> None:
        """The appended lines not yet in the file, written (the lock held)."""
        if self._pending:
            block = ("\n".join(self._pending) + "\n").encode()
            self._pending.clear()
            self._file.seek(self._end)
            self._file.write(block)
            self._end += len(block)

    def __len__(self) -> int:
        return self.count

    def _lines(self) -> Iterator[bytes]:
        """Each line written so far (and while reading), newline included, read _CHUNK bytes at a time."""
        pos, rest = 0, b""
        while True:
            with self._lock:
                self._write_pending()
                if pos >= self._end:
                    return
                self._file.seek(pos)
                block = self._file.read(min(_CHUNK, self._end - pos))
            pos += len(block)
            lines = (rest + block).split(b"\n")
            rest = lines.pop()  # the start of a line the next block ends (empty at a line's end)
            for line in lines:
                yield line + b"\n"

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
                return whole_collection(spool)
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
                ordered[key] = whole_collection(spool)
            elif key in out:
                ordered[key] = out[key]
        return ordered


def whole_collection(spool: FeatureSpool) -> dict[str, Any]:
    """The spool's features as one FeatureCollection of dicts: what the streamed paths never build (only
    `.geojson` / `model_dump` of a streamed result do)."""
    return {"type": "FeatureCollection", "features": list(spool)}


def result_features(result: ScanResult) -> FeatureSource:
    """Where a result's features are read from, one at a time (`geojson.features`): a streamed result's
    spool (never built whole), else its FeatureCollection."""
    spool = result.spool if isinstance(result, StreamedScanResult) else None
    return spool if spool is not None else result.geojson


def _included(name: str, kwargs: dict[str, Any]) -> bool:
    include, exclude = kwargs.get("include"), kwargs.get("exclude")
    return (include is None or name in include) and (exclude is None or name not in exclude)


def result_geojson_chunks(result: ScanResult) -> Iterator[bytes]:
    """The bytes of `json.dumps(result.geojson)`, in chunks; a streamed result's features are copied from its
    spool as text, never built as dicts."""
    spool = result.spool if isinstance(result, StreamedScanResult) else None
    if spool is None:
        yield json.dumps(result.geojson).encode()
        return
    yield b'{"type": "FeatureCollection", "features": '
    yield from spool.array_chunks()
    yield b"}"


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
EMPTY_COLLECTION: dict[str, Any] = {"type": "FeatureCollection", "features": []}


class _Layout(ValueError):
    """The text is not laid out as a walk expects (not an object where one is expected)."""


class _Cursor:
    """A position in a JSON text, moved over one value at a time; each value is parsed by `json`'s own
    `raw_decode` (the stdlib: the API Lambda reads stored results too), containers can be walked member by
    member instead (`members`, `items`) so that a large one is never parsed whole."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1
        return self.text[self.pos:self.pos + 1]

    def take(self, char: str) -> bool:
        """Move over `char` when it comes next."""
        if self.peek() != char:
            return False
        self.pos += 1
        return True

    def value(self) -> Any:
        """The next value, parsed."""
        self.peek()
        value, self.pos = _DECODER.raw_decode(self.text, self.pos)
        return value

    def skip(self, depth: int = 2) -> None:
        """Move over the next value, parsing at most its members `depth` levels down one at a time."""
        if depth and self.peek() == "{":
            for _ in self.members():
                self.skip(depth - 1)
        elif depth and self.peek() == "[":
            for _ in self.items():
                self.skip(depth - 1)
        else:
            self.value()

    def members(self) -> Iterator[str]:
        """Walk an object: each key, the cursor then at its value, which the caller moves over before the next."""
        if not self.take("{"):
            raise _Layout("not an object")
        if self.take("}"):
            return
        while True:
            if self.peek() != '"':
                raise _Layout("not a key")
            key = self.value()
            if not self.take(":"):
                raise _Layout("no colon")
            yield key
            if self.take("}"):
                return
            if not self.take(","):
                raise _Layout("no comma")

    def items(self) -> Iterator[int]:
        """Walk an array: each index, the cursor then at its item, which the caller moves over before the next."""
        if not self.take("["):
            raise _Layout("not an array")
        if self.take("]"):
            return
        for i in itertools.count():
            yield i
            if self.take("]"):
                return
            if not self.take(","):
                raise _Layout("no comma")

    def find(self, name: str) -> bool:
        """Walk the top-level object up to member `name` (the cursor then at its value); False without one."""
        for key in self.members():
            if key == name:
                return True
            self.skip()
        return False


def stored_result_head(raw: bytes) -> ScanResult | None:
    """The `scanId` and `results` of a stored result.json, read up to its `geojson` (never parsed: its
    features stay text) -- what the results step needs of a scan besides the text it posts as it is.

    `result_json_chunks` writes the fields in ScanResult's order (scanId, results, geojson, qcFailReasons);
    None when the text is laid out otherwise (no scanId and results before geojson): parse it whole then.
    """
    cursor = _Cursor(raw.decode())
    head: dict[str, Any] = {}
    try:
        for key in cursor.members():
            if key not in ScanResult.model_fields:
                return None
            if key == "geojson":
                break
            head[key] = cursor.value()
    except _Layout:
        return None
    if "scanId" not in head or "results" not in head:
        return None
    return ScanResult.model_validate(head)


class _Features:
    """A re-iterable FeatureSource: each walk calls `walk` again."""

    def __init__(self, walk: Callable[[], Iterator[dict[str, Any]]]) -> None:
        self._walk = walk

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._walk()


class StoredResult:
    """A stored result.json read from its text, never parsed whole: its members one by one, its features
    one at a time (the API's exports). Keys are taken as unique, as every JSON writer here writes them.

    >>> stored = StoredResult(artifacts.get(scan_result_key("task-1", "scan-7")))
    >>> stored.member("results")["model"]["name"]
    'nuclei'
    >>> write_csv(out, stored.features)   # one feature's dicts alive at a time
    """

    def __init__(self, raw: bytes) -> None:
        self._text = raw.decode()
        self.features: FeatureSource = _Features(self._walk_features)

    def member(self, name: str) -> Any:
        """A top-level member's value (None when absent); other members on the way are walked over, a
        FeatureCollection's features one at a time."""
        cursor = _Cursor(self._text)
        return cursor.value() if cursor.find(name) else None

    def _walk_features(self) -> Iterator[dict[str, Any]]:
        """What `geojson.features(json.loads(text)["geojson"])` gives, a feature at a time where the
        collection's `type` comes before its `features` (as written here); parsed whole otherwise."""
        cursor = _Cursor(self._text)
        if not cursor.find("geojson"):
            return
        start = cursor.pos
        if cursor.peek() == "{":
            kind = None
            for key in cursor.members():
                if key == "features":
                    if kind is None or kind == "Feature" or cursor.peek() != "[":
                        break  # laid out otherwise, or one Feature: parsed whole below
                    for _ in cursor.items():
                        feature = cursor.value()
                        if isinstance(feature, dict):
                            yield feature
                    return
                value = cursor.value()
                kind = value if key == "type" else kind
            cursor.pos = start
        yield from gj.features(cursor.value())

    def geojson_chunks(self) -> Iterator[bytes]:
        """The bytes of `json.dumps(json.loads(text).get("geojson") or EMPTY_COLLECTION)`, in chunks: the
        collection's members written in their order, its features one at a time."""
        cursor = _Cursor(self._text)
        found = cursor.find("geojson")
        if not found or cursor.peek() != "{":
            yield json.dumps((cursor.value() if found else None) or EMPTY_COLLECTION).encode()
            return
        out = bytearray(b"{")
        n = -1
        for n, key in enumerate(cursor.members()):
            out += b"%s%s: " % (b", " if n else b"", json.dumps(key).encode())
            if key != "features" or cursor.peek() != "[":
                out += json.dumps(cursor.value()).encode()
                continue
            out += b"["
            for i in cursor.items():
                out += b"%s%s" % (b", " if i else b"", json.dumps(cursor.value()).encode())
                if len(out) >= _CHUNK:
                    yield bytes(out)
                    out.clear()
            out += b"]"
        if n < 0:  # {} is falsy: the empty collection
            yield json.dumps(EMPTY_COLLECTION).encode()
            return
        yield bytes(out + b"}")


def result_json_bytes(result: ScanResult) -> bytes:
    """`result_json_chunks` joined: the JSON text of the result (its peak is the text, not the dicts)."""
    return b"".join(result_json_chunks(result))
