"""ckl-fuar: the five CKL baselines run on one stream, and the verdict follows the FUAR
ordering and Mix-Review's retention as the paper states them."""

import pytest
import yaml

from ckl.study.base import load_study_config, run_study
from ckl.study.ckl_fuar import CklFuar, CklFuarConfig


def _planted(fuar, retention):
    numbers = {"fuar": None, "retention": None}
    return {label: {"fuar": fuar[label], "retention": retention.get(label, 0.5), "acquisition": 0.8, "update": 0.7,
                    "extraction_retention": 0.5, "paraphrase_retention": 0.4,
                    "per_seed": [{**numbers, "seed": 0, "complete": True, "fuar": fuar[label], "retention": retention.get(label, 0.5)}]}
            for label in fuar}


@pytest.mark.parametrize("fuar,retention,verdict", [
    ({"vanilla": 0.3, "recadam": 0.2, "mix-review": 0.1, "lora": 0.15, "kadapter": 0.05}, {"mix-review": 0.9, "vanilla": 0.2}, "holds"),
    ({"vanilla": 0.3, "recadam": 0.2, "mix-review": 0.01, "lora": 0.15, "kadapter": 0.05}, {"mix-review": 0.9, "vanilla": 0.2}, "does not hold"),
    ({"vanilla": 0.3, "recadam": 0.2, "mix-review": 0.1, "lora": 0.15, "kadapter": 0.05}, {"mix-review": 0.1, "vanilla": 0.2}, "does not hold"),
    ({"vanilla": 0.3, "recadam": None, "mix-review": 0.1, "lora": 0.15, "kadapter": 0.05}, {}, "undecided"),
])
def test_the_verdict_follows_the_papers_two_claims(monkeypatch, fuar, retention, verdict):
    import ckl.results.summary

    monkeypatch.setattr(ckl.results.summary, "summarize", lambda store: _planted(fuar, retention))
    result = CklFuar(CklFuarConfig()).analyse(None, [0])
    assert result["verdict"] == verdict
    if verdict != "undecided":
        assert result["line"].startswith("FUAR kadapter 0.050 < ") or result["line"].startswith("FUAR mix-review 0.010 < ")
        assert result["numbers"]["per_seed"][0]["seed"] == 0


def test_a_claim_that_holds_in_the_mean_but_not_in_every_seed_does_not_hold(monkeypatch):
    import ckl.results.summary

    planted = _planted({"vanilla": 0.3, "recadam": 0.2, "mix-review": 0.1, "lora": 0.15, "kadapter": 0.05}, {"mix-review": 0.9, "vanilla": 0.2})
    other = dict(planted["kadapter"]["per_seed"][0], seed=1, fuar=0.5)  # seed 1: K-Adapter forgets the most
    planted["kadapter"]["per_seed"].append(other)
    for label in planted:
        if label != "kadapter":
            planted[label]["per_seed"].append(dict(planted[label]["per_seed"][0], seed=1))
    monkeypatch.setattr(ckl.results.summary, "summarize", lambda store: planted)
    result = CklFuar(CklFuarConfig()).analyse(None, [0, 1])
    assert result["verdict"] == "does not hold" and "lowest in 1 of 2 seeds" in result["line"]
    assert CklFuar(CklFuarConfig()).analyse(None, [0, 1, 2])["verdict"] == "undecided"


def test_the_study_runs_the_five_baselines_on_a_tiny_stream(tmp_path, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "seeds": [0],
                                      "eval": {"kinds": ["statement"]}, "study": {"epochs": 6, "lr": 3e-3, "adapter_lr": 1e-2}}))
    experiment, study = load_study_config(CklFuar, config)
    result = run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    assert list(result["numbers"]) == ["vanilla", "recadam", "mix-review", "lora", "kadapter"]
    assert all(result["numbers"][m]["retention"] is not None for m in result["numbers"])
    assert result["verdict"] in ("holds", "does not hold", "undecided") and len(result["panels"]) == 3
