"""Features written as text (inference/postprocess.py FeatureText, MeasurementsText, rounded): the text
json.dumps writes of geometry_feature's dicts, character for character."""

from __future__ import annotations

import json
import math
import re

import numpy as np

from scanbridge.inference.postprocess import (
    MEASUREMENT_DIGITS,
    FeatureText,
    MeasurementsText,
    geometry_feature,
    rounded,
)

ID = re.compile(r'"id": "[0-9a-f-]{36}"')


def _bits(values: list[float]) -> list[bytes]:
    return [np.float64(v).tobytes() for v in values]


def test_rounded_is_pythons_round_bit_for_bit() -> None:
    # GIVEN measurements of every sort, and the values where a shortcut would go wrong: exact ties (ties go
    # to even), values a product's rounding moves across a tie, signed zeros, tiny, huge and non-finite ones
    rng = np.random.default_rng(7)
    ties = (np.arange(-20_000, 20_000) + 0.5) / 10 ** MEASUREMENT_DIGITS
    values = np.concatenate([
        rng.normal(0.0, 50.0, 200_000), rng.uniform(0.0, 1.0, 200_000) * 1e-5, ties, np.nextafter(ties, 0.0),
        np.nextafter(ties, 1.0), rng.uniform(0, 3, 50_000).astype(np.float32).astype(np.float64),
        np.array([0.0, -0.0, -1e-9, 5e-324, 2.0 ** 52, 2.0 ** 53 + 2, 1e300, -1e300, math.nan, math.inf, -math.inf])])
    for digits in (2, MEASUREMENT_DIGITS):
        # WHEN they are rounded at once
        got = rounded(values, digits).tolist()
        # THEN each is what round() gives it, to the bit (and so to the text json writes)
        want = [round(v, digits) for v in values.tolist()]
        assert _bits(got) == _bits(want)
        assert json.dumps(got) == json.dumps(want)


def test_a_feature_line_is_json_dumps_of_its_dict() -> None:
    # GIVEN features of one kind: a simple polygon, one with a hole, a repaired one (other keys), and
    # measurements with non-ASCII keys, a negative zero and a non-finite value
    kind = {"annotation_type": "nucleus", "class_name": "Tumour ±", "colour": "#3f51b5", "object_type": "detection"}
    text = FeatureText(**kind)
    keys = ("Area µm^2", "Eccentricity", 'Odd "key"')
    cases = [
        ({"type": "Polygon", "coordinates": [[[1.0, 2.5], [3.25, 4.0], [1.0, 4.0], [1.0, 2.5]]]}, [1.0, 2.5, 3.25, 4.0],
         [12.3456, 0.5, -0.0]),
        ({"type": "Polygon", "coordinates": [[[0.0, 0.0], [9.0, 0.0], [9.0, 9.0], [0.0, 0.0]],
                                             [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 1.0]]]},
         [0.0, 0.0, 9.0, 9.0], [1e-05, 123456789.1234, 2.0]),
        ({"coordinates": [[[5, 5], [6, 5], [6, 6], [5, 5]]], "type": "Polygon"}, [5.0, 5.0, 6.0, 6.0],
         [math.nan, math.inf, 1.0]),
    ]
    for geometry, bbox, values in cases:
        # WHEN it is written as text (its values rounded first)
        line = text.line(bbox, geometry, MeasurementsText(keys)(rounded(np.array(values), MEASUREMENT_DIGITS).tolist()))
        # THEN it is the text of geometry_feature's dict (ids aside), and json reads it back as that dict
        feature = geometry_feature(geometry, bbox, measurements=dict(zip(keys, values, strict=True)), **kind)
        assert ID.sub("-", line) == ID.sub("-", json.dumps(feature))
        assert json.loads(line)["properties"]["measurements"].keys() == set(keys)
