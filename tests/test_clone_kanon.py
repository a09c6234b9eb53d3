"""The k-anonymity baselines as releases: the declared quasi-identifiers' table and the
privacy-matched ones (every non-label column a quasi-identifier; Datafly and Mondrian),
measured with the clone's own privacy measures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsilo.clone.anonymize import is_k_anonymous, k_anonymize, mondrian
from medsilo.clone.domain import TableDomain
from medsilo.clone.evaluate import baseline_label, evaluate
from medsilo.clone.schema import parse_schema
from medsilo.errors import ConfigError

SCHEMA = parse_schema(
    {
        "columns": {
            "age": {"type": "integer", "lower": 0, "upper": 100, "edges": [45, 55, 65, 75]},
            "sex": {"type": "categorical", "categories": ["F", "M"]},
            **{
                f"lab{i}": {"type": "numeric", "lower": 0, "upper": 10, "bins": 6} for i in range(6)
            },
            "y": {"type": "categorical", "categories": ["0", "1"]},
        }
    }
)


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labs = rng.uniform(0, 10, (n, 6))
    risk = labs[:, 0] + labs[:, 1] - 10 + rng.normal(0, 1, n)
    frame = pd.DataFrame({f"lab{i}": [f"{v:.2f}" for v in labs[:, i]] for i in range(6)})
    frame.insert(0, "age", [str(v) for v in rng.integers(20, 95, n)])
    frame.insert(1, "sex", rng.choice(["F", "M"], n))
    frame["y"] = np.where(risk > 0, "1", "0")
    return frame


def test_declared_and_matched_baselines_are_measured_as_releases() -> None:
    real, holdout = table(400, 0), table(400, 1)
    clone = table(400, 2)  # fresh draws: a "clone" that carries nobody's record
    result = evaluate(real, clone, holdout, SCHEMA, "y", quasi_identifiers=["age", "sex"])
    assert list(result.utility) == ["trtr", "tstr", "k5", "k10", "k5_all", "k5_all_mondrian"]
    declared, matched = result.anonymized["k5"], result.anonymized["k5_all"]
    assert declared["quasi_identifiers"] == ["age", "sex"]
    assert matched["quasi_identifiers"] == ["age", "sex", *(f"lab{i}" for i in range(6))]
    # Generalizing only the demographics leaves every lab value as it was: the table is
    # the private rows in all but name, and the distance attack finds its members.
    assert declared["distance_auroc"] > 0.9
    assert result.attack["distance_auroc"] < 0.65  # the fresh draws do not
    # Every column a quasi-identifier: far more generalization, and the model pays for it.
    assert sum(matched["levels"].values()) > sum(declared["levels"].values())
    assert matched["attack_auroc"] < declared["attack_auroc"]
    assert result.utility["k5_all"]["auroc"] <= result.utility["k5"]["auroc"] + 0.02
    assert 0.0 <= matched["rows_equal_share"] <= declared["rows_equal_share"]
    # Mondrian recodes each class on its own and keeps every row: more of the labs' signal.
    local = result.anonymized["k5_all_mondrian"]
    assert local["algorithm"] == "mondrian" and local["rows"] == 400 and local["suppressed"] == 0
    assert result.utility["k5_all_mondrian"]["auroc"] > result.utility["k5_all"]["auroc"]


def test_mondrian_output_is_k_anonymous_and_keeps_every_row() -> None:
    domain = TableDomain(SCHEMA)
    codes = domain.encode(table(300, 3)).codes
    qis = [c for c in domain.columns if c != "y"]
    for k in (2, 5, 10):
        anon = mondrian(domain, codes, qis, k)
        assert anon.rows == 300 and anon.suppressed == 0
        assert is_k_anonymous(anon.classes, k)
        assert not is_k_anonymous({q: codes[q] for q in qis}, k)  # it had work to do
        assert (anon.codes["y"] == codes["y"]).all()  # the label is not a quasi-identifier
        sizes = pd.DataFrame(anon.classes).value_counts()
        assert sizes.min() >= k and sizes.max() < 4 * k  # split down to small classes
    with pytest.raises(ConfigError, match="cannot be 5-anonymous"):
        mondrian(domain, {c: v[:3] for c, v in codes.items()}, qis, 5)


def test_no_matched_baseline_when_every_column_is_already_a_quasi_identifier() -> None:
    real, holdout = table(120, 0), table(120, 1)
    result = evaluate(real, table(120, 2), holdout, SCHEMA, "y", ks=(5,))
    assert list(result.anonymized) == ["k5", "k5_all_mondrian"]
    assert baseline_label("k5_all_mondrian") == "k=5 (all QI, Mondrian)"


@pytest.mark.parametrize("anonymizer", [k_anonymize, mondrian])
@pytest.mark.parametrize(
    ("quasi_identifiers", "k", "message"),
    [
        (["age"], 1, "k must be >= 2"),
        (["age", "ward"], 5, r"\['ward'\] are not synthesized columns"),
        ([], 5, "at least one quasi-identifier"),
    ],
)
def test_bad_k_or_quasi_identifiers_are_refused(
    anonymizer: object, quasi_identifiers: list[str], k: int, message: str
) -> None:
    domain = TableDomain(SCHEMA)
    codes = domain.encode(table(40, seed=3)).codes
    with pytest.raises(ConfigError, match=message):
        anonymizer(domain, codes, quasi_identifiers, k)  # type: ignore[operator]
