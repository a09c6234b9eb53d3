"""Built-in datasets: counts verified in each files/<name>/SOURCE.md, types, registry errors."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsilo.data import builtin
from medsilo.data.builtin import eicu, heart, retina
from medsilo.data.types import RawImages, RawTable
from medsilo.errors import DataError


@pytest.fixture(scope="module")
def heart_table() -> RawTable:
    return heart.load()


@pytest.fixture(scope="module")
def eicu_table() -> RawTable:
    return eicu.load()


@pytest.fixture(scope="module")
def eicu_by_hospital() -> RawTable:
    return eicu.load(group_by="hospital")


@pytest.fixture(scope="module")
def retina_images() -> RawImages:
    return retina.load()


def _check_table(table: RawTable) -> None:
    """The RawTable contract: only feature columns, in schema order, with the right dtypes."""
    assert list(table.frame.columns) == list(table.schema.features)
    assert len(table.frame) == len(table.labels)
    assert table.labels.dtype == np.int64
    assert set(np.unique(table.labels)) <= set(range(len(table.class_names)))
    assert table.class_names == table.schema.class_names
    for name, spec in table.schema.features.items():
        column = table.frame[name]
        if spec.type == "numeric":
            assert column.dtype == np.float64, name
            assert np.isfinite(column.dropna()).all(), name
        else:
            assert column.dtype == object, name
            values = [v for v in column if v is not None]
            assert all(type(v) is str for v in values), name
            assert not any(isinstance(v, float) for v in column), f"{name}: NaN, not None"
            assert spec.categories is not None, f"{name}: categories must be declared"
            assert set(values) <= set(spec.categories), name
    assert table.sites is not None and len(table.sites) == len(table.labels)
    assert all(isinstance(s, str) and s for s in table.sites)


# -- heart -----------------------------------------------------------------------------


def test_heart_counts(heart_table: RawTable) -> None:
    assert len(heart_table) == 920
    assert heart_table.class_names == ("negative", "positive")
    assert heart_table.sites is not None
    assert list(dict.fromkeys(heart_table.sites)) == ["cleveland", "hungary", "switzerland", "va"]
    sizes = Counter(heart_table.sites.tolist())
    assert sizes == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va": 200}
    disease = Counter(heart_table.sites[heart_table.labels == 1].tolist())
    assert disease == {"cleveland": 139, "hungary": 106, "switzerland": 115, "va": 149}


def test_heart_types_and_missing(heart_table: RawTable) -> None:
    _check_table(heart_table)
    frame, sites = heart_table.frame, heart_table.sites
    assert sites is not None
    assert set(heart_table.schema.features) == set(heart.FEATURES)
    numeric = {n for n, s in heart_table.schema.features.items() if s.type == "numeric"}
    assert numeric == {"age", "trestbps", "chol", "thalach", "oldpeak", "ca"}
    assert heart_table.schema.features["cp"].categories == ("1", "2", "3", "4")
    assert heart_table.schema.features["thal"].categories == ("3", "6", "7")
    # Cleveland's "63.0"-style values are normalised
    assert frame["sex"].iloc[0] == "1" and frame["thal"].iloc[0] == "6"
    # zero cholesterol / blood pressure is missing (SOURCE.md quirks)
    assert frame["chol"][sites == "switzerland"].isna().all()
    assert int(frame["chol"][sites == "va"].isna().sum()) == 7 + 49
    assert int(frame["trestbps"][sites == "va"].isna().sum()) == 56 + 1
    assert not (frame[["chol", "trestbps"]] == 0).any().any()
    # '?' counts per column (SOURCE.md): Cleveland ca 4, thal 2; Hungarian ca 291
    assert int(frame["ca"][sites == "cleveland"].isna().sum()) == 4
    assert sum(v is None for v in frame["thal"][sites == "cleveland"]) == 2
    assert int(frame["ca"][sites == "hungary"].isna().sum()) == 291


def test_heart_schema_reads_the_raw_files(heart_table: RawTable, tmp_path: Path) -> None:
    """The declared schema describes the shipped files: the generic reader gives the same."""
    from medsilo.data.tabular import read_table

    folder = resources.files("medsilo.data.builtin") / "files" / "heart"
    rows = ["age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num,site"]
    for site, file_name in heart.SITE_FILES.items():
        text = (folder / file_name).read_text()
        rows += [f"{line},{site}" for line in text.splitlines() if line.strip()]
    (tmp_path / "heart.csv").write_text("\n".join(rows) + "\n")
    generic = read_table(tmp_path / "heart.csv", heart_table.schema)
    assert list(generic.frame.columns) == list(heart_table.frame.columns)
    for name in heart_table.frame.columns:  # compare values; missing may be None or NaN
        ours = [None if pd.isna(v) else v for v in heart_table.frame[name]]
        theirs = [None if pd.isna(v) else v for v in generic.frame[name]]
        assert ours == theirs, name
    np.testing.assert_array_equal(generic.labels, heart_table.labels)
    np.testing.assert_array_equal(generic.sites, heart_table.sites)


# -- eicu ------------------------------------------------------------------------------


def test_eicu_counts(eicu_table: RawTable) -> None:
    assert len(eicu_table) == 2492  # 2,520 stays minus 28 with an empty discharge status
    assert int(eicu_table.labels.sum()) == 212
    assert eicu_table.class_names == ("Alive", "Expired")
    assert eicu_table.sites is not None and eicu_table.groups is not None
    assert Counter(eicu_table.sites.tolist()) == {
        "Midwest": 792,
        "South": 733,
        "West": 601,
        "unknown": 209,
        "Northeast": 157,
    }
    assert len(set(eicu_table.groups.tolist())) == 1820


def test_eicu_types(eicu_table: RawTable) -> None:
    _check_table(eicu_table)
    assert not np.isnan(eicu_table.labels.astype(float)).any()
    assert eicu_table.schema.group == "uniquepid"
    assert eicu_table.frame["age"].max() == 90.0  # '> 89' top-coding
    assert int(eicu_table.frame["age"].isna().sum()) == 4
    # -1 means missing in the APACHE tables
    aps = eicu_table.frame[list(eicu.APS_FEATURES)]
    assert not (aps == -1).any().any()
    assert aps.notna().any().all()


def test_eicu_one_row_per_stay_and_groups_are_patients(eicu_table: RawTable) -> None:
    # 1,820 patients for 2,492 stays: groups repeat, and every row has one
    assert eicu_table.groups is not None
    assert all(isinstance(g, str) and g for g in eicu_table.groups)
    assert len(eicu_table.groups) > len(set(eicu_table.groups.tolist()))


def test_eicu_has_no_outcome_leaking_feature(eicu_table: RawTable) -> None:
    features = set(eicu_table.schema.features)
    assert not features & eicu.LEAKING_COLUMNS
    leaking_words = (
        "discharge",
        "died",
        "expired",
        "mortality",
        "apachescore",
        "los",
        "score",
        "predicted",
        "actual",
        "offset",
        "status",
    )
    for name in features:
        assert not any(w in name.lower() for w in leaking_words), name


def test_eicu_by_hospital(eicu_by_hospital: RawTable) -> None:
    _check_table(eicu_by_hospital)
    assert eicu_by_hospital.sites is not None
    sizes = Counter(eicu_by_hospital.sites.tolist())
    # every one of the 186 hospitals keeps stays with a known status (8 to 40 each)
    assert len(sizes) == 186
    assert min(sizes.values()) == 8 and max(sizes.values()) == 40
    assert sizes["hospital-146"] == 40
    assert all(s.startswith("hospital-") for s in sizes)
    assert eicu_by_hospital.schema.site == "hospitalid"


def test_eicu_min_stays(eicu_by_hospital: RawTable) -> None:
    filtered = eicu.load(group_by="hospital", min_stays=20)
    assert filtered.sites is not None and filtered.groups is not None
    sizes = Counter(filtered.sites.tolist())
    assert sizes and min(sizes.values()) >= 20
    assert eicu_by_hospital.sites is not None
    full = Counter(eicu_by_hospital.sites.tolist())
    assert sizes == {s: n for s, n in full.items() if n >= 20}
    assert (
        len(filtered.frame) == len(filtered.labels) == len(filtered.groups) == sum(sizes.values())
    )
    _check_table(filtered)
    regions = eicu.load(min_stays=200)  # drops Northeast (157)
    assert regions.sites is not None
    assert set(regions.sites.tolist()) == {"Midwest", "South", "West", "unknown"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_by": "state"}, "group_by='state' is not supported; use one of 'region'"),
        ({"min_stays": -1}, "min_stays must be >= 0"),
        ({"min_stays": 2.5}, "min_stays must be a whole number"),
        ({"group_by": "hospital", "min_stays": 41}, "removes every site"),
    ],
)
def test_eicu_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        builtin.load("eicu", options)


# -- retina ----------------------------------------------------------------------------


def test_retina(retina_images: RawImages) -> None:
    r = retina_images
    assert len(r) == 1600
    assert r.images.shape == (1600, 3, 28, 28) and r.images.dtype == np.float32
    assert float(r.images.min()) >= 0.0 and float(r.images.max()) <= 1.0
    assert float(r.images.max()) > 0.9  # scaled from uint8, not left at 0-255 / 255**2
    assert r.labels.dtype == np.int64 and r.labels.shape == (1600,)
    assert Counter(r.labels.tolist()) == {0: 714, 1: 186, 2: 326, 3: 282, 4: 92}
    # official train split first (SOURCE.md: train 1,080 labels)
    assert Counter(r.labels[:1080].tolist()) == {0: 486, 1: 128, 2: 206, 3: 194, 4: 66}
    assert len(r.class_names) == 5
    assert r.sites is None


# -- registry --------------------------------------------------------------------------


def test_registry_entries() -> None:
    assert builtin.names() == ("heart", "eicu", "retina")
    for name in builtin.names():
        d = builtin.get(name)
        assert d.name == name and d.summary and d.description
    assert builtin.get("retina").kind == "image" and not builtin.get("retina").natural_sites
    assert builtin.get("heart").natural_sites and builtin.get("eicu").natural_sites
    assert builtin.get("eicu").options == ("group_by", "min_stays")
    assert builtin.get("heart").options == ()


def test_registry_load_passes_options() -> None:
    table = builtin.load("eicu", {"group_by": "region", "min_stays": 200})
    assert isinstance(table, RawTable)
    assert isinstance(builtin.load("heart"), RawTable)
    assert isinstance(builtin.load("retina", {}), RawImages)


def test_unknown_dataset_suggests_the_closest() -> None:
    with pytest.raises(DataError) as err:
        builtin.get("haert")
    text = str(err.value)
    assert "unknown dataset 'haert'" in text and "did you mean 'heart'?" in text
    assert "heart, eicu, retina" in text and "CSV/Parquet" in text
    with pytest.raises(DataError, match="built-in datasets are: heart, eicu, retina"):
        builtin.load("xyz")


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(DataError) as err:
        builtin.load("eicu", {"groupby": "hospital"})
    text = str(err.value)
    assert "'groupby'" in text and "did you mean 'group_by'?" in text
    assert "group_by, min_stays" in text
    with pytest.raises(DataError, match=r"'seed'.*accepts no options"):
        builtin.load("heart", {"seed": 1})


def test_descriptions_cite_licence_and_source() -> None:
    assert "CC BY 4.0" in heart.DESCRIPTION and "10.24432/C52P4X" in heart.DESCRIPTION
    assert "ODbL" in eicu.DESCRIPTION and "10.13026/4mxk-na84" in eicu.DESCRIPTION
    for name in eicu.FEATURES:
        assert name in eicu.DESCRIPTION, name
    assert "CC BY 4.0" in retina.DESCRIPTION and "MedMNIST" in retina.DESCRIPTION


def test_shipped_files_have_licence_and_source() -> None:
    root = resources.files("medsilo.data.builtin") / "files"
    for name in ("heart", "eicu", "retina"):
        assert (root / name / "LICENSE.md").is_file(), name
        source = (root / name / "SOURCE.md").read_text()
        assert "copied into medsilo" in source and "unchanged" in source
    assert not (root / "eicu" / "vitalAperiodic.csv.gz").is_file()


def test_loaders_are_deterministic(heart_table: RawTable) -> None:
    again = heart.load()
    pd.testing.assert_frame_equal(again.frame, heart_table.frame)
    np.testing.assert_array_equal(again.labels, heart_table.labels)
