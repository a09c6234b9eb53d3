"""CSV/Parquet readers, the schema, per-site preprocessing against hand-computed numbers,
federate's site checks, and every DataError message (file, row, column, value)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from conftest import tiny_frame, write_csv
from medsilo.data.federate import PartitionSpec, federate
from medsilo.data.preprocess import ImageNormalizer, TabularPreprocessor
from medsilo.data.schema import TableSchema
from medsilo.data.tabular import read_table
from medsilo.data.types import RawImages
from medsilo.errors import ConfigError, DataError

SCHEMA = TableSchema.model_validate(
    {
        "features": {
            "age": "numeric",
            "bp": "numeric",
            "sex": {"type": "categorical", "categories": ["f", "m"]},
        },
        "label": "y",
        "site": "hosp",
    }
)


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- reading ------------------------------------------------------------------------


def test_csv_values_types_missing_and_sites(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "age,bp,sex,y,hosp,unused\n61,120,m,1,A,x\n?,NA,f,0,A,x\n 40.5 ,,,1,B,x\n",
    )
    table = read_table(path, SCHEMA)
    assert list(table.frame.columns) == ["age", "bp", "sex"]
    np.testing.assert_array_equal(table.frame["age"].to_numpy(), [61.0, np.nan, 40.5])
    np.testing.assert_array_equal(table.frame["bp"].to_numpy(), [120.0, np.nan, np.nan])
    assert table.frame["sex"].tolist() == ["m", "f", None]
    assert table.labels.tolist() == [1, 0, 1]
    assert table.class_names == ("0", "1")
    assert table.sites is not None and table.sites.tolist() == ["A", "A", "B"]
    assert table.schema.classes == ("0", "1")


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "age": [61.0, np.nan, 40.0],
            "bp": [120, 130, 110],
            "sex": ["m", None, "f"],
            "y": [1, 0, 1],
            "hosp": ["A", "A", "B"],
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    table = read_table(tmp_path / "t.parquet", SCHEMA)
    np.testing.assert_array_equal(table.frame["age"].to_numpy(), [61.0, np.nan, 40.0])
    np.testing.assert_array_equal(table.frame["bp"].to_numpy(), [120.0, 130.0, 110.0])
    assert table.frame["sex"].tolist() == ["m", None, "f"]
    assert table.labels.tolist() == [1, 0, 1]
    assert table.sites is not None and table.sites.tolist() == ["A", "A", "B"]


def test_one_file_per_site(tmp_path: Path) -> None:
    schema = SCHEMA.model_copy(update={"site": None})
    a = _write(tmp_path, "age,bp,sex,y\n61,120,m,1\n50,110,f,0\n", "a.csv")
    pd.DataFrame({"age": [70.0], "bp": [140.0], "sex": ["f"], "y": [1]}).to_parquet(
        tmp_path / "b.parquet"
    )
    table = read_table({"north": a, "south": tmp_path / "b.parquet"}, schema)
    assert table.sites is not None and table.sites.tolist() == ["north", "north", "south"]
    np.testing.assert_array_equal(table.frame["age"].to_numpy(), [61.0, 50.0, 70.0])
    assert table.labels.tolist() == [1, 0, 1]


def test_one_file_per_site_errors_name_the_file_and_its_own_row(tmp_path: Path) -> None:
    schema = SCHEMA.model_copy(update={"site": None})
    a = _write(tmp_path, "age,bp,sex,y\n61,120,m,1\n50,110,f,0\n", "a.csv")
    b = _write(tmp_path, "age,bp,sex,y\n61,120,m,1\n50,high,f,0\n", "b.csv")
    with pytest.raises(DataError) as info:
        read_table({"a": a, "b": b}, schema)
    assert f"{b}, row 2, column 'bp': value 'high' is not a number" in str(info.value)
    with pytest.raises(DataError, match="declares a site column"):
        read_table({"a": a}, SCHEMA)


def test_positive_binarizes_and_declared_classes_order_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "age,bp,sex,y,hosp\n1,1,m,0,A\n1,1,m,2.0,A\n1,1,m,3,A\n")
    binary = read_table(path, SCHEMA.model_copy(update={"positive": ("2", "3")}))
    assert binary.labels.tolist() == [0, 1, 1]
    assert binary.class_names == ("negative", "positive")
    ordered = read_table(path, SCHEMA.model_copy(update={"classes": ("3", "2", "0")}))
    assert ordered.labels.tolist() == [2, 1, 0]
    assert ordered.class_names == ("3", "2", "0")


def test_inferred_categories_are_the_sorted_union(tmp_path: Path) -> None:
    schema = TableSchema.model_validate(
        {"features": {"age": "numeric", "cp": "categorical"}, "label": "y", "site": "hosp"}
    )
    path = _write(tmp_path, "age,cp,y,hosp\n1,4.0,0,A\n1,2,1,A\n1,?,1,B\n1,4,0,B\n")
    table = read_table(path, schema)
    assert table.schema.features["cp"].categories == ("2", "4")
    assert table.frame["cp"].tolist() == ["4", "2", None, "4"]


def test_per_column_missing_values(tmp_path: Path) -> None:
    schema = TableSchema.model_validate(
        {
            "features": {"chol": {"type": "numeric", "missing_values": ["0"]}, "age": "numeric"},
            "label": "y",
        }
    )
    path = _write(tmp_path, "chol,age,y\n0,0,1\n200,50,0\n")
    table = read_table(path, schema)
    np.testing.assert_array_equal(table.frame["chol"].to_numpy(), [np.nan, 200.0])
    np.testing.assert_array_equal(table.frame["age"].to_numpy(), [0.0, 50.0])


# -- every DataError names file, row, column, value -----------------------------------


def _tiny(tmp_path: Path, edit: object = None) -> Path:
    frame = tiny_frame(rows_per_site=12)
    if callable(edit):
        edit(frame)
    return write_csv(tmp_path / "d.csv", frame)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=rf"data file not found: {path}"):
        read_table(path, SCHEMA)


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "x", "t.xlsx")
    with pytest.raises(DataError, match=r"t.xlsx: unsupported file type"):
        read_table(path, SCHEMA)


def test_unreadable_parquet_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "this is not parquet", "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: cannot be read as a table"):
        read_table(path, SCHEMA)


def test_header_without_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "age,bp,sex,y,hosp\n")
    with pytest.raises(DataError, match=r"t.csv: the file has a header but no rows"):
        read_table(path, SCHEMA)


def test_misspelt_column_suggests_the_close_one(tmp_path: Path) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.columns = ["Age" if c == "age" else c for c in f.columns]

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA)
    message = str(info.value)
    assert f"{path}: column 'age' (did you mean 'Age'?) declared in the schema" in message
    assert "columns present:" in message and "Age" in message


def test_missing_column(tmp_path: Path) -> None:
    def edit(f: pd.DataFrame) -> None:
        del f["bp"]

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError, match=r"column 'bp' declared in the schema is not in the file"):
        read_table(path, SCHEMA)


def test_text_in_a_numeric_column(tmp_path: Path) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.loc[4, "age"] = "sixty"

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA)
    # data row 5 (spreadsheet-style: the first row after the header is row 1)
    assert f"{path}, row 5, column 'age': value 'sixty' is not a number" in str(info.value)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999"])
def test_infinite_value(tmp_path: Path, value: str) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.loc[9, "bp"] = value

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA)
    assert f"{path}, row 10, column 'bp': value '{value}' is infinite" in str(info.value)


@pytest.mark.parametrize("value", ["NaN", "", "?"])
def test_missing_label(tmp_path: Path, value: str) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.loc[7, "y"] = value
        f.loc[8, "y"] = value

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA)
    message = str(info.value)
    assert f"{path}, row 8, label column 'y': the label is missing ({value!r})" in message
    assert "2 row(s) have no label" in message


def test_undeclared_category(tmp_path: Path) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.loc[11, "sex"] = "x"

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA)
    assert f"{path}, row 12, column 'sex': category 'x' is not among the declared" in str(
        info.value
    )


def test_label_not_among_declared_classes(tmp_path: Path) -> None:
    path = _write(tmp_path, "age,bp,sex,y,hosp\n1,1,m,0,A\n1,1,m,7,A\n")
    with pytest.raises(DataError) as info:
        read_table(path, SCHEMA.model_copy(update={"classes": ("0", "1")}))
    assert f"{path}, row 2, label column 'y': value '7' is not among the declared" in str(
        info.value
    )


def test_single_label_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "age,bp,sex,y,hosp\n1,1,m,0,A\n2,1,m,0,B\n")
    with pytest.raises(DataError, match=r"label column 'y' has a single value '0'"):
        read_table(path, SCHEMA)


def test_empty_site(tmp_path: Path) -> None:
    def edit(f: pd.DataFrame) -> None:
        f.loc[2, "hosp"] = " "

    path = _tiny(tmp_path, edit)
    with pytest.raises(DataError, match=rf"{path}, row 3, column 'hosp': the site is empty"):
        read_table(path, SCHEMA)


# -- schema validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"features": {}, "label": "y"}, "features"),
        ({"features": {"a": "numerc"}, "label": "y"}, "numeric"),
        ({"features": {"a": "numeric"}, "label": "a"}, "column 'a' is both a feature"),
        (
            {"features": {"a": {"type": "numeric", "categories": ["1"]}}, "label": "y"},
            "'categories' is allowed only for type = 'categorical'",
        ),
        (
            {"features": {"a": {"type": "categorical", "categories": ["1", "1"]}}, "label": "y"},
            "'categories' has duplicates",
        ),
        (
            {"features": {"a": "numeric"}, "label": "y", "classes": ["0"], "positive": ["1"]},
            "either 'classes' or 'positive'",
        ),
        ({"features": {"a": "numeric"}, "label": "y", "colour": "x"}, "Extra inputs"),
    ],
)
def test_schema_rules(schema: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TableSchema.model_validate(schema)


def test_schema_columns_order() -> None:
    assert SCHEMA.columns() == ["age", "bp", "sex", "y", "hosp"]


# -- preprocessing, against numbers computed by hand -----------------------------------


def _prep_frame() -> tuple[pd.DataFrame, TableSchema]:
    schema = TableSchema.model_validate(
        {
            "features": {
                "age": "numeric",
                "const": "numeric",
                "never": "numeric",
                "sex": {"type": "categorical", "categories": ["f", "m", "x"]},
            },
            "label": "y",
        }
    )
    frame = pd.DataFrame(
        {
            "age": [10.0, np.nan, 30.0, 50.0],
            "const": [7.0, 7.0, np.nan, 7.0],
            "never": [np.nan] * 4,
            "sex": pd.Series(["m", "f", None, "m"], dtype=object),
        }
    )
    return frame, schema


def test_preprocessor_fit_statistics_by_hand() -> None:
    frame, schema = _prep_frame()
    prep = TabularPreprocessor.fit(frame, schema)
    # age: observed 10, 30, 50 -> median 30; filled 10, 30, 30, 50 -> mean 30,
    # population std sqrt((400 + 0 + 0 + 400) / 4) = sqrt(200)
    assert prep.medians["age"] == 30.0
    assert prep.means["age"] == 30.0
    assert prep.stds["age"] == pytest.approx(math.sqrt(200.0), rel=1e-12)
    # const: median 7, filled all 7, std 0 -> replaced by 1 (no division by zero)
    assert (prep.medians["const"], prep.means["const"], prep.stds["const"]) == (7.0, 7.0, 1.0)
    # never observed: median 0, std 1
    assert (prep.medians["never"], prep.means["never"], prep.stds["never"]) == (0.0, 0.0, 1.0)
    assert "sex" not in prep.medians


def test_preprocessor_transform_by_hand() -> None:
    frame, schema = _prep_frame()
    prep = TabularPreprocessor.fit(frame, schema)
    assert prep.feature_names() == (
        "age",
        "age__missing",
        "const",
        "const__missing",
        "never",
        "never__missing",
        "sex=f",
        "sex=m",
        "sex=x",
    )
    s = math.sqrt(200.0)
    expected = np.array(
        [
            # age (z), age missing, const, const missing, never, never missing, f, m, x
            [-20 / s, 0, 0, 0, 0, 1, 0, 1, 0],
            [0, 1, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 0, 1, 0, 0, 0],  # a missing category is the all-zero vector
            [20 / s, 0, 0, 0, 0, 1, 0, 1, 0],
        ],
        dtype=np.float32,
    )
    out = prep.transform(frame)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    # New rows are transformed with the *training* statistics: (70 - 30) / sqrt(200).
    new = pd.DataFrame(
        {"age": [70.0], "const": [9.0], "never": [3.0], "sex": pd.Series(["x"], dtype=object)}
    )
    np.testing.assert_allclose(
        prep.transform(new), [[40 / s, 0, 2.0, 0, 3.0, 0, 0, 0, 1]], rtol=1e-6
    )


def test_image_normalizer_by_hand() -> None:
    images = np.zeros((2, 2, 1, 2), dtype=np.float32)
    images[0, 0] = [[0.0, 1.0]]
    images[1, 0] = [[1.0, 2.0]]  # channel 0: values 0, 1, 1, 2 -> mean 1, std sqrt(0.5)
    images[:, 1] = 0.5  # channel 1 constant -> std replaced by 1
    norm = ImageNormalizer.fit(images)
    np.testing.assert_allclose(norm.mean, [1.0, 0.5])
    np.testing.assert_allclose(norm.std, [math.sqrt(0.5), 1.0])
    out = norm.transform(images)
    np.testing.assert_allclose(out[0, 0, 0], [-1 / math.sqrt(0.5), 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], 0.0)


# -- federate: per-site fitting, site checks --------------------------------------------


def test_federate_fits_preprocessing_per_site(tmp_path: Path) -> None:
    frame = tiny_frame(rows_per_site=60)
    # Site C measures age in months: per-site scaling absorbs it, pooled scaling does not.
    c = frame["hosp"] == "C"
    frame.loc[c, "age"] = (frame.loc[c, "age"].astype(float) * 12).map(str)
    raw = read_table(write_csv(tmp_path / "d.csv", frame), SCHEMA)
    data, warnings = federate(raw, PartitionSpec(), seed=0)
    assert warnings == []
    assert data.site_names == ("A", "B", "C")
    assert data.feature_names == (
        "age",
        "age__missing",
        "bp",
        "bp__missing",
        "sex=f",
        "sex=m",
    )
    assert data.input_shape == (6,)
    for site in data.sites:
        age = site.x_train[:, 0].astype(np.float64)
        assert abs(age.mean()) < 1e-6 and abs(age.std() - 1.0) < 1e-5
        n = 60  # rows per site: test 15, val round(0.15 * n_c) per class, rest train
        assert len(site.y_train) + len(site.y_val) + len(site.y_test) == n
        np.testing.assert_array_equal(site.x_train[:, 4] + site.x_train[:, 5], 1.0)
    pooled, _ = federate(raw, PartitionSpec(preprocessing="pooled"), seed=0)
    assert pooled.site("C").x_train[:, 0].mean() > 1.0  # months stay far above the pool
    assert pooled.site("A").x_train[:, 0].mean() < -0.3


def test_federate_is_seeded(tmp_path: Path) -> None:
    raw = read_table(write_csv(tmp_path / "d.csv", tiny_frame()), SCHEMA)
    a, _ = federate(raw, PartitionSpec(), seed=3)
    b, _ = federate(raw, PartitionSpec(), seed=3)
    c, _ = federate(raw, PartitionSpec(), seed=4)
    assert all(np.array_equal(x.x_train, y.x_train) for x, y in zip(a.sites, b.sites, strict=True))
    assert not all(
        np.array_equal(x.y_test, y.y_test) for x, y in zip(a.sites, c.sites, strict=True)
    )


def test_site_with_one_class_is_an_error_or_dropped(tmp_path: Path) -> None:
    frame = tiny_frame()
    frame.loc[frame["hosp"] == "B", "y"] = "1"
    raw = read_table(write_csv(tmp_path / "d.csv", frame), SCHEMA)
    with pytest.raises(DataError) as info:
        federate(raw, PartitionSpec(), seed=0)
    assert "site 'B': all 40 rows have the single class '1'" in str(info.value)
    assert "on_invalid_site = 'drop'" in str(info.value)
    data, warnings = federate(raw, PartitionSpec(on_invalid_site="drop"), seed=0)
    assert data.site_names == ("A", "C")
    assert warnings == ["site 'B' dropped: all 40 rows have the single class '1'"]


def test_site_with_too_few_rows(tmp_path: Path) -> None:
    frame = tiny_frame()
    frame.loc[frame.index[frame["hosp"] == "C"][:35], "hosp"] = "A"
    raw = read_table(write_csv(tmp_path / "d.csv", frame), SCHEMA)
    with pytest.raises(DataError, match=r"site 'C': only 5 rows \(data.min_site_rows = 10\)"):
        federate(raw, PartitionSpec(), seed=0)
    with pytest.raises(DataError, match=r"no usable site is left"):
        federate(raw, PartitionSpec(min_site_rows=1000, on_invalid_site="drop"), seed=0)


def test_natural_partition_errors() -> None:
    images = RawImages(
        images=np.zeros((20, 1, 2, 2), dtype=np.float32),
        labels=np.arange(20) % 2,
        class_names=("a", "b"),
    )
    with pytest.raises(ConfigError, match=r"data.partition: 'natural' needs a site"):
        federate(images, PartitionSpec(), seed=0)
    with pytest.raises(ConfigError, match=r"data.num_sites: required for partition = 'iid'"):
        federate(images, PartitionSpec(partition="iid"), seed=0)
    data, _ = federate(images, PartitionSpec(partition="iid", num_sites=2, min_site_rows=2), 0)
    assert data.site_names == ("site-0", "site-1")
    assert data.input_shape == (1, 2, 2)


def test_unknown_selected_site(tmp_path: Path) -> None:
    raw = read_table(write_csv(tmp_path / "d.csv", tiny_frame()), SCHEMA)
    with pytest.raises(ConfigError, match=r"data.sites: unknown site\(s\) \['Z'\]"):
        federate(raw, PartitionSpec(sites=("A", "Z")), seed=0)
    data, _ = federate(raw, PartitionSpec(sites=("C", "A")), seed=0)
    assert data.site_names == ("C", "A")


def test_a_split_that_rounds_to_no_rows_is_an_error(tmp_path: Path) -> None:
    raw = read_table(write_csv(tmp_path / "d.csv", tiny_frame()), SCHEMA)
    # 40 rows per site: 0.01 * (class size <= 40) rounds to 0 in every class
    with pytest.raises(DataError) as info:
        federate(raw, PartitionSpec(val_fraction=0.01), seed=0)
    assert "site 'A': its validation split is empty (40 rows" in str(info.value)
    assert "data.val_fraction = 0.01" in str(info.value)
    with pytest.raises(DataError, match=r"site 'A': its test split is empty"):
        federate(raw, PartitionSpec(test_fraction=0.01), seed=0)
    data, _ = federate(raw, PartitionSpec(val_fraction=0.0), seed=0)
    assert all(len(s.y_val) == 0 and len(s.y_test) > 0 for s in data.sites)


def test_declared_categories_match_their_own_spelling_and_numeric_variants(
    tmp_path: Path,
) -> None:
    schema = TableSchema.model_validate(
        {
            "features": {
                "zip": {"type": "categorical", "categories": ["02139", "02140"]},
                "cp": {"type": "categorical", "categories": ["1", "2"]},
            },
            "label": "y",
        }
    )
    # An Excel export: UTF-8 with a byte-order mark; cp written as 1.0 / 2.0.
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffzip,cp,y\n02139,1.0,1\n02140,2,0\n".encode())
    table = read_table(path, schema)
    assert table.frame["zip"].tolist() == ["02139", "02140"]
    assert table.frame["cp"].tolist() == ["1", "2"]
    prep = TabularPreprocessor.fit(table.frame, table.schema)
    np.testing.assert_array_equal(prep.transform(table.frame), [[1, 0, 1, 0], [0, 1, 0, 1]])
