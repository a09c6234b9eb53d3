"""The federated pretrain -> fine-tune -> local step study runs end to end (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsilo.data.text import Sentence, write_conll
from medsilo.errors import ConfigError
from medsilo.privacy.ledger import Ledger
from medsilo.study.text import load_text_study, parse_text_study, run_text_study

FILLER = {
    "en": ("the patient has", "and was given", "today"),
    "es": ("el paciente tiene", "y recibió", "hoy"),
    "pub": ("we report", "treated with", "in mice"),
}
DISEASES = ("fever", "cough", "asthma", "sepsis")
DRUGS = ("aspirin", "insulin", "heparin")


def _sentences(lang: str, n: int, seed: int) -> list[Sentence]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b, c = (f.split() for f in FILLER[lang])
        disease, drug = rng.choice(DISEASES), rng.choice(DRUGS)
        words = [*a, "acute", disease, *b, drug, *c, "."]
        tags = ["O"] * len(a) + ["B-DIS", "I-DIS"] + ["O"] * len(b) + ["B-DRUG"]
        tags += ["O"] * (len(c) + 1)
        out.append(Sentence(tuple(words), tuple(tags)))
    return out


STUDY = """
[study]
name = "tiny"
seed = 3

[model]
layers = 1
hidden = 16
heads = 2
intermediate = 32
max_len = 12
overlap = 3

[tokenizer]
vocab_size = 300

[providers.en]
train = ["en_train.tsv"]
test = ["en_test.tsv"]

[providers.es]
train = ["es_train.tsv"]
test = ["es_test.tsv"]

[public]
train = ["pub.tsv"]
label_map = { DRUG = "O" }

[pretrain]
rounds = 1
batch_size = 8
lr = 0.05

[finetune]
rounds = 2
batch_size = 8
lr = 0.05

[local_step]
fine_tune_epochs = 1
"""


def _fixture(tmp_path: Path, extra: str = "") -> Path:
    for i, lang in enumerate(("en", "es")):
        write_conll(tmp_path / f"{lang}_train.tsv", _sentences(lang, 24, i))
        write_conll(tmp_path / f"{lang}_test.tsv", _sentences(lang, 8, 10 + i))
    write_conll(tmp_path / "pub.tsv", _sentences("pub", 24, 7))
    path = tmp_path / "study.toml"
    path.write_text(STUDY + extra, encoding="utf-8")
    return path


def test_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    study = load_text_study(_fixture(tmp_path))
    result = run_text_study(study, tmp_path / "out")
    assert result.labels == ("O", "B-DIS", "I-DIS", "B-DRUG", "I-DRUG")
    assert set(result.scores) == {
        "federated",
        "federated+local",
        "local",
        "central_public",
        "pooled",
    }
    for setting in result.scores.values():
        assert set(setting) == {"en", "es"}
        for row in setting.values():
            assert 0.0 <= row["f1"] <= 1.0
            assert row["support/DIS"] == 8  # every test sentence has one disease
    # the public corpus has no drug label: the central model never predicts one
    assert all(r["precision/DRUG"] == 0.0 for r in result.scores["central_public"].values())
    assert len(result.round_seconds["federated"]["pretrain"]) == 1
    assert set(result.round_seconds) == {
        "federated",
        "local:en",
        "local:es",
        "central_public",
        "pooled",
    }
    assert len(result.round_seconds["federated"]["finetune"]) == 2
    assert len(result.mlm_loss) == 1 and np.isfinite(result.mlm_loss[0])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["scores"]["pooled"]["en"]["f1"] == result.scores["pooled"]["en"]["f1"]
    assert saved["mean_f1"]["federated"] == pytest.approx(result.mean_f1("federated"))


@pytest.mark.slow
def test_pipeline_learns_the_entities(tmp_path: Path) -> None:
    path = _fixture(tmp_path)
    text = path.read_text().replace("rounds = 2", "rounds = 12")
    path.write_text(text)
    study = load_text_study(path)
    study = study.model_copy(update={"baselines": []})
    result = run_text_study(study)
    assert result.mean_f1("federated+local") > 0.8


def test_dp_pipeline_records_every_step_in_each_ledger(tmp_path: Path) -> None:
    extra = "\n[privacy]\nepsilon = 50.0\nnoise_multiplier = 1.0\nclip = 1.0\n"
    path = _fixture(tmp_path, extra)
    study = load_text_study(path)
    study = study.model_copy(update={"baselines": ["local"]})
    result = run_text_study(study, tmp_path / "out")
    for name in ("en", "es"):
        with Ledger.open(tmp_path / "out" / "ledgers" / name) as ledger:
            releases = ledger.releases()
            # 1 pretraining round + 2 fine-tuning rounds + the local step
            assert [r.round for r in releases] == [1, 2, 3, 4]
            assert result.epsilon[name] == pytest.approx(ledger.epsilon_spent())
            assert ledger.verify().releases == 4  # raises if the hash chain is broken
        with Ledger.open(tmp_path / "out" / "baselines" / "ledgers" / name) as ledger:
            assert len(ledger.releases()) == 4
    assert all(e > 0 for e in result.epsilon.values())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "[providers.en]\ntrain = ['a.tsv']\n",
            r"providers\.en\.test: Value error|every provider needs a test",
        ),
        ("[providerz]\n", r"providerz: unknown field"),
        ("[tokenizer]\nvocab_size = 10\n", r"tokenizer\.vocab_size"),
    ],
)
def test_study_file_errors(edit: str, message: str) -> None:
    base = "[providers.x]\ntrain = ['x.tsv']\ntest = ['y.tsv']\n[public]\ntrain = ['p.tsv']\n"
    text = base if edit.startswith("[providers") else base + edit
    if edit.startswith("[providers"):
        text = edit + "[public]\ntrain = ['p.tsv']\n"
    with pytest.raises(ConfigError, match=message):
        parse_text_study(text, "s.toml")


def test_adamw_pipeline_learns_and_saves_taggers(tmp_path: Path) -> None:
    """AdamW (warmup + decay over the phase) fine-tunes the tiny study to a useful tagger
    in a few rounds; the saved federated and local-step models load and tag raw text."""
    from medsilo.tasks.deid import find_phi
    from medsilo.tasks.tagger import Tagger

    path = _fixture(tmp_path)
    text = path.read_text().replace("rounds = 2", "rounds = 4\nlocal_epochs = 2")
    text = text.replace("lr = 0.05", "lr = 0.01\noptimizer = 'adamw'")
    text = text.replace("seed = 3\n", "seed = 3\nsave_model = true\n")
    path.write_text(text)
    study = load_text_study(path).model_copy(update={"baselines": []})
    assert study.finetune.optimizer == "adamw"
    result = run_text_study(study, tmp_path / "out")
    assert result.mean_f1("federated+local") > 0.5
    models = tmp_path / "out" / "models"
    assert {p.name for p in (models / "federated+local").iterdir()} == {"en", "es"}
    tagger = Tagger.load(models / "federated")
    assert tagger.labels == result.labels
    found = find_phi("the patient has acute asthma and was given insulin today .", tagger)
    assert all(s.label in ("DIS", "DRUG") for s in found)


def test_adamw_with_dp_is_refused() -> None:
    base = "[providers.x]\ntrain = ['x.tsv']\ntest = ['y.tsv']\n[public]\ntrain = ['p.tsv']\n"
    text = (
        base + "[finetune]\noptimizer = 'adamw'\n[privacy]\nepsilon = 1.0\nnoise_multiplier = 1.0\n"
    )
    with pytest.raises(ConfigError, match="DP-SGD runs with SGD"):
        parse_text_study(text, "s.toml")


def test_learning_curve_scores_the_global_model_after_rounds(tmp_path: Path) -> None:
    """``run_setting(score_every=k)`` scores the fine-tuning phase's global model after
    every k-th round and the last; the last point is the reported ``federated`` score."""
    from medsilo.study.text import prepare, run_setting

    path = _fixture(tmp_path)
    path.write_text(path.read_text().replace("rounds = 2", "rounds = 3"))
    study = load_text_study(path).model_copy(update={"baselines": []})
    data = prepare(study)
    seen: list[tuple[int, dict[str, dict[str, float]]]] = []
    result = run_setting(
        study, data, "federated", on_scores=lambda r, s: seen.append((r, s)), score_every=2
    )
    assert [r for r, _ in seen] == [2, 3]
    assert seen[-1][1] == result.scores["federated"]
    local = run_setting(study, data, "local:en", on_scores=lambda r, s: seen.append((r, s)))
    assert len(seen) == 2 and set(local.scores["local"]) == {"en"}  # score_every = 0: none


def test_pooled_baseline_takes_the_federations_steps_per_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``local_steps = s`` and n providers a federated round costs n * s batches; the
    pooled baseline trains with n * s steps a round (not s: a 1/n share, undertrained),
    and a phase counted in epochs is left as it is."""
    import medsilo.study.text as text_study

    path = _fixture(tmp_path)
    text = path.read_text().replace("lr = 0.05", "lr = 0.01\noptimizer = 'adamw'")
    text = text.replace("[finetune]\nrounds = 2", "[finetune]\nrounds = 2\nlocal_steps = 3")
    path.write_text(text)
    study = load_text_study(path).model_copy(update={"baselines": ["pooled"]})
    data = text_study.prepare(study)
    seen: list[text_study.TextStudy] = []
    run = text_study.run_pipeline

    def recorded(s: text_study.TextStudy, *args: object, **kw: object) -> object:
        seen.append(s)
        return run(s, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(text_study, "run_pipeline", recorded)
    text_study.run_setting(study, data, "pooled")
    assert seen[0].finetune.local_steps == 6
    assert seen[0].pretrain.local_steps is None
    assert seen[0].pretrain.local_epochs == study.pretrain.local_epochs
    assert study.finetune.local_steps == 3  # the study itself is unchanged
