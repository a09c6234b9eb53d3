"""Declared cut points (``edges``) instead of equal-width bins: validation names the column,
TOML/JSON round trip, unequal-width encode/decode stays inside its bin and the bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsilo.clone.builtin import SCHEMAS
from medsilo.clone.domain import TableDomain
from medsilo.clone.schema import load_schema, parse_schema
from medsilo.errors import ConfigError

COLUMNS = {
    "glucose": {"type": "numeric", "lower": 0, "upper": 1500, "edges": [40, 60, 200, 350]},
    "age": {"type": "integer", "lower": 0, "upper": 90, "edges": [45, 55, 65, 75]},
    "admitted": {
        "type": "date",
        "lower": "2014-01-01",
        "upper": "2015-12-31",
        "edges": ["2014-07-01", "2015-01-01"],
    },
    "sex": {"type": "categorical", "categories": ["F", "M"]},
}


def schema_with(column: dict[str, object]) -> dict[str, object]:
    return {"columns": {"x": column, "sex": COLUMNS["sex"]}}


def test_cut_points_make_unequal_bins() -> None:
    domain = TableDomain(parse_schema({"columns": COLUMNS}))
    assert domain.sizes == {"glucose": 6, "age": 6, "admitted": 4, "sex": 3}
    frame = pd.DataFrame(
        {
            "glucose": ["0", "39.9", "40", "199", "200", "1500", "2000", ""],
            "age": ["0", "44", "45", "74", "75", "90", "95", ""],
            "admitted": ["2014-01-01", "2014-06-30", "2014-07-01", "2015-01-01"] * 2,
            "sex": ["F"] * 8,
        }
    )
    enc = domain.encode(frame)
    assert enc.codes["glucose"].tolist() == [0, 0, 1, 2, 3, 4, 4, 5]  # 5 = missing
    assert enc.codes["age"].tolist() == [0, 0, 1, 3, 4, 4, 4, 5]
    assert enc.codes["admitted"].tolist() == [0, 0, 1, 2] * 2
    assert enc.clipped.above == {"glucose": 1, "age": 1}


def test_decoded_values_stay_inside_their_bin_and_the_bounds() -> None:
    domain = TableDomain(parse_schema({"columns": COLUMNS}))
    rng = np.random.default_rng(0)
    n = 4000
    codes = {c: rng.integers(0, domain.sizes[c], n) for c in domain.columns}
    out = domain.decode(codes, np.random.default_rng(1))
    again = domain.encode(out).codes
    for column in domain.columns:
        assert (again[column] == codes[column]).all(), column  # same bin back
    glucose = pd.to_numeric(out["glucose"], errors="coerce").dropna()
    assert glucose.between(0, 1500).all() and glucose.lt(40).any() and glucose.ge(350).any()
    ages = pd.to_numeric(out["age"], errors="coerce").dropna()
    assert ages.between(0, 90).all() and (ages == ages.round()).all()
    assert set(ages[codes["age"][out["age"] != ""] == 4]) == set(range(75, 91))  # last: closed
    dates = pd.to_datetime(out["admitted"].replace("", None)).dropna()
    assert dates.between("2014-01-01", "2015-12-31").all()


def test_toml_and_json_round_trip(tmp_path: Path) -> None:
    schema = parse_schema({"columns": COLUMNS})
    toml = tmp_path / "s.toml"
    toml.write_text(schema.to_toml(), encoding="utf-8")
    assert "edges = [40.0, 60.0, 200.0, 350.0]" in toml.read_text(encoding="utf-8")
    assert load_schema(toml) == schema
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"columns": COLUMNS}), encoding="utf-8")
    assert load_schema(js) == schema
    assert schema.columns["glucose"].n_bins == 5 and schema.columns["admitted"].n_bins == 3


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            {"type": "numeric", "lower": 0, "upper": 10, "edges": [5, 3]},
            r"columns\.x: .*strictly increasing: 5\.0 then 3\.0",
        ),
        (
            {"type": "numeric", "lower": 0, "upper": 10, "edges": [2, 2]},
            r"columns\.x: .*strictly increasing",
        ),
        (
            {"type": "numeric", "lower": 0, "upper": 10, "edges": [0, 5]},
            r"columns\.x: .*strictly between lower \(0\.0\) and upper \(10\.0\); outside: \[0\.0\]",
        ),
        (
            {"type": "numeric", "lower": 0, "upper": 10, "edges": [5, 12]},
            r"columns\.x: .*outside: \[12\.0\]",
        ),
        (
            {"type": "numeric", "lower": 0, "upper": 10, "bins": 4, "edges": [5]},
            r"columns\.x: .*'bins' \(equal-width\) or 'edges' \(cut points\), not both",
        ),
        ({"type": "numeric", "lower": 0, "upper": 10, "edges": []}, r"columns\.x: .*empty"),
        (
            {"type": "integer", "lower": 0, "upper": 10, "edges": [3.2, 3.8]},
            r"columns\.x: .*\[3\.2, 3\.8\) holds no whole number",
        ),
        (
            {"type": "date", "lower": "2014-01-01", "upper": "2015-01-01", "edges": [5]},
            r"columns\.x: .*must be dates",
        ),
        (
            {"type": "categorical", "categories": ["a"], "edges": [1]},
            r"columns\.x: .*'edges' are not allowed for type 'categorical'",
        ),
    ],
)
def test_bad_edges_name_the_column(column: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_schema(schema_with(column))


def test_builtin_eicu_schema_uses_few_public_bins() -> None:
    eicu = SCHEMAS["eicu"]
    spec = eicu.columns["glucose"]
    assert spec.edges is not None and spec.n_bins <= 7
    numeric = [s for s in eicu.columns.values() if s.type == "numeric"]
    assert numeric and all(s.edges is not None and s.n_bins <= 7 for s in numeric)
