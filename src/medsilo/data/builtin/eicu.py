"""eICU Collaborative Research Database Demo: in-hospital mortality of ICU stays.

Source: eICU-CRD Demo v2.0 (Johnson, Pollard, Badawi & Raffa, PhysioNet,
doi:10.13026/4mxk-na84; Pollard et al., Sci Data 5:180178, 2018), ODbL v1.0; tables
converted by the ``eicu.demo`` R package. Provenance and counts in ``files/eicu/SOURCE.md``.

Only information available on the first ICU day is used: admission data from ``patient``
and the APACHE IV inputs (worst values of day 1) from ``apacheApsVar`` and
``apachePredVar``. Nothing computed from the outcome (APACHE scores and predicted
mortality, discharge times, places or status, ``diedinhospital``) is a feature.
"""

from __future__ import annotations

import io
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

from medsilo.data.schema import FeatureSpec, TableSchema
from medsilo.data.types import RawTable
from medsilo.errors import DataError

GroupBy = Literal["region", "hospital"]
GROUP_BY: tuple[str, ...] = ("region", "hospital")
CLASS_NAMES = ("Alive", "Expired")
LABEL = "hospitaldischargestatus"

#: Categories of the ``patient`` columns (every value present in the demo data).
PATIENT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "gender": ("Female", "Male"),
    "unittype": (
        "CCU-CTICU",
        "CSICU",
        "CTICU",
        "Cardiac ICU",
        "MICU",
        "Med-Surg ICU",
        "Neuro ICU",
        "SICU",
    ),
    "unitadmitsource": (
        "Acute Care/Floor",
        "Chest Pain Center",
        "Direct Admit",
        "Emergency Department",
        "Floor",
        "ICU",
        "ICU to SDU",
        "Operating Room",
        "Other Hospital",
        "Other ICU",
        "PACU",
        "Recovery Room",
        "Step-Down Unit (SDU)",
    ),
}
#: ``apacheApsVar``: worst day-1 physiology; -1 = missing. Flags (intubated, vent,
#: dialysis, meds = GCS not assessable because of sedation) are numeric 0/1.
APS_FEATURES = (
    "intubated",
    "vent",
    "dialysis",
    "eyes",
    "motor",
    "verbal",
    "meds",
    "urine",
    "wbc",
    "temperature",
    "respiratoryrate",
    "sodium",
    "heartrate",
    "meanbp",
    "ph",
    "hematocrit",
    "creatinine",
    "albumin",
    "pao2",
    "pco2",
    "bun",
    "glucose",
    "bilirubin",
    "fio2",
)
#: ``apachePredVar``: admission flags and APACHE chronic-health items, numeric 0/1.
#: (``aids`` is left out: it is 0 for every stay of the demo.)
PRED_FEATURES = (
    "readmit",
    "thrombolytics",
    "diabetes",
    "hepaticfailure",
    "lymphoma",
    "metastaticcancer",
    "leukemia",
    "immunosuppression",
    "cirrhosis",
)
#: ``apachePredVar.electivesurgery`` is filled only for surgical admissions (1 = elective,
#: 0 = emergency); a categorical keeps "not recorded" (None) apart from 0.
ELECTIVE = "electivesurgery"

FEATURES: tuple[str, ...] = ("age", *PATIENT_CATEGORIES, *APS_FEATURES, *PRED_FEATURES, ELECTIVE)

#: Columns that reveal the outcome or come from after day 1; never features.
LEAKING_COLUMNS = frozenset(
    {
        "hospitaldischargestatus",
        "hospitaldischargeoffset",
        "hospitaldischargelocation",
        "hospitaldischargetime24",
        "hospitaldischargeyear",
        "unitdischargestatus",
        "unitdischargeoffset",
        "unitdischargelocation",
        "unitdischargetime24",
        "dischargeweight",
        "diedinhospital",
        "dischargelocation",
        "acutephysiologyscore",
        "apachescore",
        "predictedicumortality",
        "actualicumortality",
        "predictediculos",
        "actualiculos",
        "predictedhospitalmortality",
        "actualhospitalmortality",
        "predictedhospitallos",
        "actualhospitallos",
        "unabridgedunitlos",
        "unabridgedhosplos",
        "actualventdays",
        "predventdays",
        "unabridgedactualventdays",
    }
)


def _schema(site_column: str) -> TableSchema:
    features: dict[str, FeatureSpec] = {"age": FeatureSpec(type="numeric")}
    for name, categories in PATIENT_CATEGORIES.items():
        features[name] = FeatureSpec(type="categorical", categories=categories)
    for name in (*APS_FEATURES, *PRED_FEATURES):
        features[name] = FeatureSpec(type="numeric", missing_values=("-1",))
    features[ELECTIVE] = FeatureSpec(type="categorical", categories=("0", "1"))
    return TableSchema(
        features=features, label=LABEL, classes=CLASS_NAMES, site=site_column, group="uniquepid"
    )


DESCRIPTION = """\
eICU-CRD Demo: in-hospital mortality of ICU stays, 186 US hospitals (Philips eICU, 2014-15).
One row per ICU unit stay: 2,492 stays with a known hospital discharge status (212 'Expired',
8.5%); the 28 stays with an empty status are dropped (2,520 in the demo).
Sites: group_by='region' (default) -> Midwest 792, South 733, West 601, Northeast 157,
unknown 209 (hospital region missing); group_by='hospital' -> 186 sites 'hospital-<id>' of
8-40 stays. min_stays=N drops sites with fewer than N stays.
Groups: uniquepid, 1,820 patients (all stays of a patient stay in one split). 19 patients
have stays in more than one hospital (7 in more than one region): those stays are in
different sites, as they would be in a real federation.
Features (38), day-1 information only:
  patient: age ('> 89' -> 90), gender, unittype, unitadmitsource (categorical);
  apacheApsVar (worst day-1 values, -1 -> missing): intubated, vent, dialysis, eyes, motor,
  verbal, meds, urine, wbc, temperature, respiratoryrate, sodium, heartrate, meanbp, ph,
  hematocrit, creatinine, albumin, pao2, pco2, bun, glucose, bilirubin, fio2;
  apachePredVar: readmit, thrombolytics, diabetes, hepaticfailure, lymphoma, metastaticcancer,
  leukemia, immunosuppression, cirrhosis (0/1), electivesurgery (categorical '0'/'1',
  recorded for surgical admissions only).
  313 stays have no APACHE row: their APACHE features are missing.
  No APACHE score, predicted mortality, discharge or length-of-stay column is used.
Licence: Open Database License (ODbL) v1.0. Cite: Johnson, Pollard, Badawi & Raffa (2021),
eICU-CRD Demo, PhysioNet, doi:10.13026/4mxk-na84; Pollard et al., Sci Data 5:180178 (2018)."""


def _read(table: str) -> pd.DataFrame:
    path = resources.files("medsilo.data.builtin") / "files" / "eicu" / f"{table}.csv.gz"
    return pd.read_csv(
        io.BytesIO(path.read_bytes()), compression="gzip", dtype=str, keep_default_na=False
    )


def _number(text: pd.Series, minus_one_missing: bool) -> np.ndarray:
    values = pd.to_numeric(text.str.strip().replace("", np.nan), errors="raise")
    out: np.ndarray = np.array(values, dtype=np.float64)  # a writable copy
    if minus_one_missing:
        out[out == -1.0] = np.nan
    return out


def _age(text: pd.Series) -> np.ndarray:
    """eICU ages are text; ``'> 89'`` (HIPAA top-coding) becomes 90, empty is missing."""
    return _number(text.str.strip().replace("> 89", "90"), minus_one_missing=False)


def _category(text: pd.Series, categories: tuple[str, ...], column: str) -> pd.Series:
    values = [v.strip() or None for v in text]
    unknown = {v for v in values if v is not None} - set(categories)
    if unknown:  # the shipped files are fixed; this guards against a bad copy
        raise ValueError(f"eicu: column {column} has undeclared values {sorted(unknown)}")
    return pd.Series(values, dtype=object)


def _check_options(group_by: object, min_stays: object) -> None:
    if group_by not in GROUP_BY:
        raise DataError(
            f"eicu: option group_by={group_by!r} is not supported; use one of "
            f"{', '.join(repr(g) for g in GROUP_BY)}"
        )
    if isinstance(min_stays, bool) or not isinstance(min_stays, int):
        raise DataError(f"eicu: option min_stays must be a whole number >= 0, got {min_stays!r}")
    if min_stays < 0:
        raise DataError(f"eicu: option min_stays must be >= 0, got {min_stays}")


def load(group_by: GroupBy = "region", min_stays: int = 0) -> RawTable:
    """One row per ICU stay with a known discharge status, sorted by patientunitstayid.

    ``group_by`` picks the natural sites (hospital region or hospital); ``min_stays``
    drops sites with fewer stays than that (after grouping).
    """
    _check_options(group_by, min_stays)
    patient = _read("patient")
    hospital = _read("hospital")
    aps = _read("apacheApsVar")
    pred = _read("apachePredVar")

    patient = patient[patient[LABEL].str.strip() != ""]
    stays = patient.merge(
        hospital[["hospitalid", "region"]], on="hospitalid", how="left", validate="many_to_one"
    )
    stays = stays.merge(
        aps[["patientunitstayid", *APS_FEATURES]],
        on="patientunitstayid",
        how="left",
        validate="one_to_one",
    )
    stays = stays.merge(
        pred[["patientunitstayid", *PRED_FEATURES, ELECTIVE]],
        on="patientunitstayid",
        how="left",
        validate="one_to_one",
    )
    stays = stays.fillna("")  # stays without an APACHE row: every APACHE value missing
    stays = stays.sort_values(
        "patientunitstayid", key=lambda s: s.astype(np.int64), kind="stable"
    ).reset_index(drop=True)

    if group_by == "region":
        site_column = "region"
        sites = stays["region"].str.strip().replace("", "unknown")
    else:
        site_column = "hospitalid"
        sites = "hospital-" + stays["hospitalid"].str.strip()
    if min_stays > 0:
        counts = sites.value_counts()
        keep = sites.map(counts).to_numpy() >= min_stays
        if not keep.any():
            raise DataError(
                f"eicu: min_stays={min_stays} removes every site (the largest "
                f"{group_by} has {int(counts.max())} stays); lower min_stays"
            )
        stays = stays[keep].reset_index(drop=True)
        sites = sites[keep].reset_index(drop=True)

    columns: dict[str, object] = {"age": _age(stays["age"])}
    for name, categories in PATIENT_CATEGORIES.items():
        columns[name] = _category(stays[name], categories, name)
    for name in (*APS_FEATURES, *PRED_FEATURES):
        columns[name] = _number(stays[name], minus_one_missing=True)
    columns[ELECTIVE] = _category(stays[ELECTIVE], ("0", "1"), ELECTIVE)
    frame = pd.DataFrame(columns)

    status = stays[LABEL].str.strip()
    if not status.isin(CLASS_NAMES).all():  # guards against a bad copy of the files
        unexpected = sorted(set(status) - set(CLASS_NAMES))
        raise ValueError(f"eicu: unexpected {LABEL} values {unexpected}")
    labels = (status == "Expired").to_numpy().astype(np.int64)
    return RawTable(
        frame=frame,
        labels=labels,
        class_names=CLASS_NAMES,
        schema=_schema(site_column),
        sites=sites.to_numpy(dtype=object),
        groups=stays["uniquepid"].str.strip().to_numpy(dtype=object),
    )
