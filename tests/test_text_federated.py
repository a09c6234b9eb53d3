"""Federated tagging with AdamW: rounds of a few steps, Adam's moments, and a two-language
federation against pooled training (the regression the de-identification collapse called
for, docs/text.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsilo.data.text import Sentence, write_conll
from medsilo.errors import ConfigError
from medsilo.study.text import parse_text_study, prepare, run_setting
from medsilo.tasks.text import AdamWSchedule, TextModelSpec, build_model, train_adamw


def _model() -> torch.nn.Module:
    spec = TextModelSpec(
        layers=1, hidden=16, heads=2, intermediate=32, max_len=12, overlap=2, dropout=0.0
    )
    return build_model(spec, "tagging", vocab_size=50, pad_id=0, num_labels=3, seed=0)


def test_adamw_in_pieces_with_moments_is_one_run() -> None:
    """A phase cut into rounds of a few steps, the moments carried, is the same run:
    same batches (the data order runs on across calls), same Adam state."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(4, 50, (40, 12), generator=gen)
    y = torch.randint(0, 3, (40, 12), generator=gen)
    schedule = AdamWSchedule(lr=1e-2, total_steps=15, warmup_steps=2)
    whole, pieces, restarted = _model(), _model(), _model()
    train_adamw(whole, x, y, schedule, batch_size=8, seed=3, steps=15)
    moments: dict[str, object] = {}
    for start in (0, 4, 8, 12):  # 5 steps per epoch: the pieces cross epoch boundaries
        count = min(4, 15 - start)
        train_adamw(
            pieces,
            x,
            y,
            schedule,
            batch_size=8,
            seed=3,
            start_step=start,
            steps=count,
            moments=moments,
        )
        train_adamw(restarted, x, y, schedule, batch_size=8, seed=3, start_step=start, steps=count)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(pieces.state_dict()[key], value, rtol=0, atol=1e-6)
    assert moments["state"]  # the moments were kept
    differs = any(
        not torch.allclose(restarted.state_dict()[k], v) for k, v in whole.state_dict().items()
    )
    assert differs  # without the moments every piece restarts Adam


FILLER = {
    "en": ("the patient has", "and was given", "today"),
    "es": ("el paciente tiene", "y recibió", "hoy"),
    "pub": ("we report", "treated with", "in mice"),
}


def _sentences(lang: str, n: int, seed: int) -> list[Sentence]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b, c = (f.split() for f in FILLER[lang])
        disease = str(rng.choice(("fever", "cough", "asthma", "sepsis")))
        drug = str(rng.choice(("aspirin", "insulin", "heparin")))
        words = [*a, "acute", disease, *b, drug, *c, "."]
        tags = ["O"] * len(a) + ["B-DIS", "I-DIS"] + ["O"] * len(b) + ["B-DRUG"]
        out.append(Sentence(tuple(words), tuple(tags + ["O"] * (len(c) + 1))))
    return out


STUDY = """
baselines = ["pooled"]

[study]
seed = 0

[model]
layers = 1
hidden = 16
heads = 2
intermediate = 32
max_len = 16
overlap = 3

[tokenizer]
vocab_size = 300
public = ["pub.tsv"]

[providers.en]
train = ["en_train.tsv"]
test = ["en_test.tsv"]

[providers.es]
train = ["{second}_train.tsv"]
test = ["{second}_test.tsv"]

[finetune]
optimizer = "adamw"
batch_size = 8
lr = 1e-2
rounds = 20
local_steps = 4
"""


@pytest.mark.parametrize("second", ["en", "es"])
def test_federated_tagging_reaches_pooled(tmp_path: Path, second: str) -> None:
    """Two providers (the same language twice, or English and Spanish) federated in
    rounds of a few AdamW steps tag as well as the same steps on the pooled rows, within
    0.1 F1; the collapse (F1 near 0 where pooled training learnt) would fail it."""
    torch.set_num_threads(1)
    for i, lang in enumerate(("en", "es")):
        write_conll(tmp_path / f"{lang}_train.tsv", _sentences(lang, 32, i))
        write_conll(tmp_path / f"{lang}_test.tsv", _sentences(lang, 12, 10 + i))
    write_conll(tmp_path / "pub.tsv", _sentences("pub", 32, 7))
    study = parse_text_study(STUDY.format(second=second), "s.toml", tmp_path)
    data = prepare(study)
    fed = run_setting(study, data, "federated").scores["federated"]
    pooled = run_setting(study, data, "pooled").scores["pooled"]
    fed_f1 = np.mean([r["f1"] for r in fed.values()])
    pooled_f1 = np.mean([r["f1"] for r in pooled.values()])
    assert pooled_f1 > 0.8
    assert fed_f1 >= pooled_f1 - 0.1


def test_local_steps_need_adamw() -> None:
    text = (
        "baselines = []\n[tokenizer]\npublic = ['p.tsv']\n"
        "[providers.x]\ntrain = ['x.tsv']\ntest = ['y.tsv']\n[finetune]\nlocal_steps = 4\n"
    )
    with pytest.raises(ConfigError, match=r"finetune\.local_steps"):
        parse_text_study(text, "s.toml")
