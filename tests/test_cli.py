"""The CLI: datasets, report, --json, and every bad input: exit code 2, a message that
names the file / field / row / value, no traceback, and no run directory left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from conftest import study_text, tiny_data_section, tiny_frame, write_csv
from medsilo.cli.main import app

runner = CliRunner()
CLI = [sys.executable, "-c", "from medsilo.cli.main import app; app()"]


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_bad_input(result: Result, out: Path | None, *needles: str) -> None:
    """Exit code 2, an ``error:`` message with every needle, no traceback, no run dir."""
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert "error:" in result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    if out is not None:
        assert not out.exists(), "a failed run must not leave a run directory"
        assert not list(out.parent.glob(f".{out.name}.partial-*"))


# -- working commands ---------------------------------------------------------------------


def test_datasets_list_json() -> None:
    result = invoke("datasets", "list", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    by_name = {d["name"]: d for d in items}
    assert set(by_name) == {"heart", "eicu", "retina"}
    assert by_name["heart"]["natural_sites"] is True
    assert by_name["retina"]["kind"] == "image"
    assert by_name["eicu"]["options"] == ["group_by", "min_stays"]


def test_datasets_list_and_describe() -> None:
    table = invoke("datasets", "list")
    assert table.exit_code == 0
    for name in ("heart", "eicu", "retina"):
        assert name in table.stdout
    described = invoke("datasets", "describe", "heart")
    assert described.exit_code == 0
    for needle in ("cleveland 303", "hungary 294", "switzerland 123", "va 200", "CC BY 4.0"):
        assert needle in described.stdout


def test_run_then_report(tmp_path: Path, tiny_study: Path) -> None:
    out = tmp_path / "run"
    result = invoke("run", str(tiny_study), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["run_dir"] == str(out)
    assert {(r["site"], r["setting"]) for r in payload["per_site"]} == {
        (s, setting) for s in "ABC" for setting in ("federated", "local_only", "pooled")
    }
    assert [m["setting"] for m in payload["mean"]] == ["federated", "local_only", "pooled"]
    (out / "report.html").unlink()

    report = invoke("report", str(out), "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["per_site"] == payload["per_site"]
    assert (out / "report.html").exists(), "report rebuilds report.html"

    text = invoke("report", str(out))
    assert text.exit_code == 0
    assert "Test accuracy per site" in text.stdout
    assert "mean of sites" in text.stdout
    for site in "ABC":
        assert site in text.stdout


# -- bad study files ----------------------------------------------------------------------


def test_missing_study_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "nope.toml"
    assert_bad_input(
        invoke("run", str(missing), "--out", str(out)), out, f"study file not found: {missing}"
    )


def test_invalid_toml(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    study = write_study('[study]\nname = "x\n')
    out = tmp_path / "run"
    assert_bad_input(invoke("run", str(study), "--out", str(out)), out, f"{study}: not valid TOML")


def test_missing_data_section_keeps_the_table_name(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study = write_study('[study]\nname = "x"\n')
    out = tmp_path / "run"
    assert_bad_input(
        invoke("run", str(study), "--out", str(out)),
        out,
        f"{study}: data: the [data] section is required",
    )


HEART = 'dataset = "heart"'


@pytest.mark.parametrize(
    ("data", "extra", "needles"),
    [
        pytest.param(
            HEART,
            "[train]\nlrr = 0.1",
            ["train.lrr: unknown field (did you mean 'lr'?)"],
            id="unknown-field",
        ),
        pytest.param(
            HEART,
            "[trian]\nlr = 0.1",
            ["trian: unknown field (did you mean 'train'?)"],
            id="unknown-section",
        ),
        pytest.param(
            HEART + "\nnum_site = 3",
            "",
            ["data.num_site: unknown field (did you mean 'num_sites'?)"],
            id="unknown-data-field",
        ),
        pytest.param(
            HEART,
            "[train]\nlr = -1",
            ["train.lr: Input should be greater than 0 (got -1)"],
            id="lr-negative",
        ),
        pytest.param(
            HEART,
            '[train]\nbatch_size = "abc"',
            ["train.batch_size: Input should be a valid integer", "(got 'abc')"],
            id="text-for-integer",
        ),
        pytest.param(
            HEART + '\npartition = "dirichet"',
            "",
            ["data.partition: Input should be 'natural', 'iid', 'dirichlet'", "(got 'dirichet')"],
            id="partition-misspelt",
        ),
        pytest.param(
            HEART,
            '[strategy]\nname = "fedavgg"',
            ["strategy.name: Input should be 'fedavg'", "(got 'fedavgg')"],
            id="unknown-strategy",
        ),
        pytest.param(
            HEART,
            "[strategy]\nfraction = 1.5",
            ["strategy.fraction: Input should be less than or equal to 1 (got 1.5)"],
            id="fraction",
        ),
        pytest.param(
            HEART,
            '[strategy]\nname = "fedprox"\nmu = 0',
            ["strategy: fedprox needs mu > 0"],
            id="fedprox-mu-zero",
        ),
        pytest.param(
            HEART + '\nschema = { features = { age = "numeric" }, label = "num" }',
            "",
            ["data: built-in datasets bring their own schema"],
            id="schema-with-builtin",
        ),
        pytest.param(
            'path = "data.csv"',
            "",
            ["data: a data file needs a [data.schema] (features, label, site)"],
            id="path-without-schema",
        ),
        pytest.param(
            HEART + '\npath = "data.csv"',
            "",
            ["data: give exactly one of 'dataset'", "got ['dataset', 'path']"],
            id="two-sources",
        ),
    ],
)
def test_invalid_config_value(
    tmp_path: Path,
    write_study: Callable[..., Path],
    data: str,
    extra: str,
    needles: list[str],
) -> None:
    study = write_study(study_text(data, extra=extra))
    out = tmp_path / "run"
    result = invoke("run", str(study), "--out", str(out))
    assert_bad_input(result, out, *(f"{study}: {needles[0]}", *needles[1:]))


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("rounds", "0", "study.rounds: Input should be greater than or equal to 1 (got 0)"),
        ("seed", "-1", "study.seed: Input should be greater than or equal to 0 (got -1)"),
        ("name", '"a/b"', "study.name: String should match pattern"),
        ("rouns", "4", "study.rouns: unknown field (did you mean 'rounds'?)"),
    ],
)
def test_invalid_study_section(
    tmp_path: Path, write_study: Callable[..., Path], field: str, value: str, needle: str
) -> None:
    study = write_study(f"[study]\n{field} = {value}\n[data]\n{HEART}\n")
    out = tmp_path / "run"
    assert_bad_input(invoke("run", str(study), "--out", str(out)), out, f"{study}: {needle}")


@pytest.mark.parametrize(
    ("data", "extra", "needles"),
    [
        pytest.param(
            'dataset = "haert"',
            "",
            ["unknown dataset 'haert' (did you mean 'heart'?)", "heart, eicu, retina"],
            id="unknown-dataset",
        ),
        pytest.param(
            HEART + '\noptions = { group_by = "region" }',
            "",
            ["dataset 'heart': unknown option 'group_by'; it accepts no options"],
            id="unknown-option",
        ),
        pytest.param(
            'dataset = "eicu"\noptions = { group_by = "continent" }',
            "",
            ["group_by='continent'", "'region', 'hospital'"],
            id="bad-option-value",
        ),
        pytest.param(
            HEART + '\nsites = ["cleveland", "boston"]',
            "",
            ["data.sites: unknown site(s) ['boston']"],
            id="unknown-site",
        ),
        pytest.param(
            HEART + '\npartition = "iid"',
            "",
            ["data.num_sites: required for partition = 'iid'"],
            id="iid-without-num-sites",
        ),
        pytest.param(
            HEART + "\nval_fraction = 0.5\ntest_fraction = 0.6",
            "",
            ["got val=0.5, test=0.6"],
            id="fractions-sum",
        ),
        pytest.param(
            HEART + "\ntest_fraction = 0.001",
            "",
            ["site 'cleveland': its test split is empty", "data.test_fraction = 0.001"],
            id="test-split-rounds-to-zero",
        ),
        pytest.param(
            HEART,
            "[strategy]\nmin_sites = 5",
            ["strategy.min_sites: must be at most the number of sites, 4", "(got 5)"],
            id="min-sites-above-sites",
        ),
        pytest.param(
            HEART,
            '[model]\nname = "cnn"',
            ["model.name: 'cnn' needs an image dataset; this one is tabular"],
            id="cnn-on-a-table",
        ),
        pytest.param(
            HEART,
            "[strategy]\nfedbn = true",
            ["strategy.fedbn: model 'logreg' has no normalization layer"],
            id="fedbn-without-norm-layers",
        ),
    ],
)
def test_invalid_study_found_when_loading_data(
    tmp_path: Path,
    write_study: Callable[..., Path],
    data: str,
    extra: str,
    needles: list[str],
) -> None:
    study = write_study(study_text(data, extra=extra))
    out = tmp_path / "run"
    assert_bad_input(invoke("run", str(study), "--out", str(out)), out, *needles)


# -- bad data files -----------------------------------------------------------------------


def _bad_csv(
    tmp_path: Path, write_study: Callable[..., Path], edit: Callable[[pd.DataFrame], object]
) -> tuple[Path, Path]:
    frame = tiny_frame()
    edit(frame)
    csv = write_csv(tmp_path / "data.csv", frame)
    return write_study(study_text(tiny_data_section())), csv


def _set(row: int, column: str, value: str) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[row, column] = value

    return edit


def _rename(old: str, new: str) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        frame.columns = [new if c == old else c for c in frame.columns]

    return edit


def _drop(column: str) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        del frame[column]

    return edit


def _only_class(site: str, label: str) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[frame["hosp"] == site, "y"] = label

    return edit


def _shrink(site: str, keep: int) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        rows = frame.index[frame["hosp"] == site]
        frame.loc[rows[keep:], "hosp"] = "A"

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        pytest.param(
            _rename("age", "Age"),
            ["column 'age' (did you mean 'Age'?) declared in the schema is not in the file"],
            id="misspelt-column",
        ),
        pytest.param(
            _drop("bp"),
            ["column 'bp' declared in the schema is not in the file", "columns present: age, sex"],
            id="missing-column",
        ),
        pytest.param(
            _set(4, "age", "sixty"),
            ["row 5, column 'age': value 'sixty' is not a number"],
            id="text-in-numeric-column",
        ),
        pytest.param(
            _set(9, "bp", "inf"),
            ["row 10, column 'bp': value 'inf' is infinite"],
            id="inf-value",
        ),
        pytest.param(
            _set(7, "y", "NaN"),
            ["row 8, label column 'y': the label is missing ('NaN')"],
            id="nan-label",
        ),
        pytest.param(
            _set(11, "sex", "x"),
            ["row 12, column 'sex': category 'x' is not among the declared categories"],
            id="undeclared-category",
        ),
        pytest.param(
            _set(12, "hosp", ""),
            ["row 13, column 'hosp': the site is empty"],
            id="empty-site",
        ),
    ],
)
def test_bad_data_file_names_file_row_column_value(
    tmp_path: Path,
    write_study: Callable[..., Path],
    edit: Callable[[pd.DataFrame], object],
    needles: list[str],
) -> None:
    study, csv = _bad_csv(tmp_path, write_study, edit)
    out = tmp_path / "run"
    result = invoke("run", str(study), "--out", str(out))
    # the file is named as the study resolves it: relative to the study file's folder
    assert_bad_input(result, out, str(csv.resolve()), *needles)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        pytest.param(
            _only_class("B", "1"),
            ["site 'B': all 40 rows have the single class '1'", "on_invalid_site = 'drop'"],
            id="one-class-site",
        ),
        pytest.param(
            _shrink("C", 5),
            ["site 'C': only 5 rows (data.min_site_rows = 10)"],
            id="too-few-rows",
        ),
    ],
)
def test_unusable_site(
    tmp_path: Path,
    write_study: Callable[..., Path],
    edit: Callable[[pd.DataFrame], object],
    needles: list[str],
) -> None:
    study, _ = _bad_csv(tmp_path, write_study, edit)
    out = tmp_path / "run"
    assert_bad_input(invoke("run", str(study), "--out", str(out)), out, *needles)


def test_missing_data_file(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    study = write_study(study_text(tiny_data_section("missing.csv")))
    out = tmp_path / "run"
    assert_bad_input(
        invoke("run", str(study), "--out", str(out)),
        out,
        f"data file not found: {(tmp_path / 'missing.csv').resolve()}",
    )


def test_missing_file_of_one_site(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    write_csv(tmp_path / "a.csv", tiny_frame().drop(columns="hosp"))
    schema = tiny_data_section().split("\n", 2)[2].replace('site = "hosp"\n', "")
    data = f'paths = {{ a = "a.csv", b = "b.csv" }}\n{schema}'
    study = write_study(study_text(data))
    out = tmp_path / "run"
    assert_bad_input(
        invoke("run", str(study), "--out", str(out)),
        out,
        f"data file not found: {(tmp_path / 'b.csv').resolve()}",
    )


# -- run directories ----------------------------------------------------------------------


def test_existing_run_directory_is_refused_and_left_alone(tmp_path: Path, tiny_study: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("run", str(tiny_study), "--out", str(out))
    assert_bad_input(
        result, None, f"run directory {out} already exists", f"medsilo run --resume {out}"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".run.partial-*"))


def test_out_below_a_file(tmp_path: Path, tiny_study: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    result = invoke("run", str(tiny_study), "--out", str(out))
    assert_bad_input(result, None, f"{tmp_path / 'afile'} is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run"], id="neither"),
        pytest.param(["run", "study.toml", "--resume", "x"], id="both"),
    ],
)
def test_study_xor_resume(args: list[str]) -> None:
    assert_bad_input(invoke(*args), None, "give either a STUDY file or --resume RUN_DIR")


@pytest.mark.parametrize("command", [["run", "--resume"], ["report"]])
def test_not_a_run_directory(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "notes").mkdir()
    result = invoke(*command, str(tmp_path / "notes"))
    assert_bad_input(result, None, f"{tmp_path / 'notes'} is not a medsilo run directory")
    assert list((tmp_path / "notes").iterdir()) == []


def test_describe_unknown_dataset() -> None:
    assert_bad_input(
        invoke("datasets", "describe", "haert"),
        None,
        "unknown dataset 'haert' (did you mean 'heart'?)",
    )


# -- a real process: the console script's own error path ------------------------------------


def test_real_process_bad_input_exit_2_without_traceback(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study, csv = _bad_csv(tmp_path, write_study, _set(4, "age", "sixty"))
    out = tmp_path / "run"
    proc = subprocess.run(
        [*CLI, "run", str(study), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{csv.resolve()}, row 5, column 'age': value 'sixty' is not a number" in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".run.partial-*"))


def test_report_of_an_interrupted_run(
    tmp_path: Path, tiny_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medsilo.report.rundir import RunDirectory

    original = RunDirectory.save_checkpoint

    def save(self: RunDirectory, arrays: object, rounds_completed: int) -> None:
        if rounds_completed == 2:
            raise KeyboardInterrupt
        original(self, arrays, rounds_completed)  # type: ignore[arg-type]

    monkeypatch.setattr(RunDirectory, "save_checkpoint", save)
    out = tmp_path / "run"
    interrupted = invoke("run", str(tiny_study), "--out", str(out))
    assert interrupted.exit_code == 130
    assert "interrupted; continue with: medsilo run --resume" in interrupted.stderr
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    report = invoke("report", str(out), "--json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["per_site"]
    # no baselines yet; the federated rows are those of the last evaluated round
    assert {(r["site"], r["setting"], r["round"]) for r in rows} == {
        (s, "federated", 2) for s in "ABC"
    }
    assert "Status <b>running</b>" in (out / "report.html").read_text()


def test_a_bug_prints_no_local_variables(
    tmp_path: Path,
    tiny_study: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An internal error (exit 1) shows a traceback, but never the local variables of
    its frames: they hold patient rows."""
    import typer.main

    import medsilo.study.run

    def broken(config: object) -> None:
        patient_row = "-".join(["PATIENT", "ROW", "61"])  # not in the source as shown
        raise RuntimeError(f"bug while building ({len(patient_row)})")

    monkeypatch.setattr(medsilo.study.run, "build_federation", broken)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored afterwards
    with pytest.raises(RuntimeError) as info:
        app(["run", str(tiny_study), "--out", str(tmp_path / "run")])
    typer.main.except_hook(RuntimeError, info.value, info.value.__traceback__)
    shown = capsys.readouterr().err
    assert "RuntimeError" in shown and "bug while building" in shown
    assert "patient_row" in shown  # the traceback is shown ...
    assert "PATIENT-ROW-61" not in shown  # ... without the frame's local values
    assert not (tmp_path / "run").exists()
