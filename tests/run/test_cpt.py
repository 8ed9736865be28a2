"""Continual pre-training streams end to end: stages that train on a domain corpus, the
domains' held-out loss after every row, and the domain numbers in the table."""

import pytest

from ckl.core.errors import InputError
from ckl.data.world import WorldConfig, build_world
from ckl.results.store import Store
from ckl.results.summary import summarize
from ckl.run.config import ExperimentConfig
from ckl.run.experiment import run_experiment
from tests.conftest import TINY_PRETRAIN

CPT_WORLD = dict(seed=1, people=12, stages=2, learn_per_stage=0, update_per_stage=0, forget_per_stage=0, general_train=40,
                 general_heldout=20, background_people=6, min_probe_word_count=0, distinct_first_names=False,
                 corpus_per_stage=40, corpus_heldout=10)


@pytest.fixture(scope="module")
def cpt(tmp_path_factory, accelerator):
    """(stream directory, a tiny model pretrained on its base knowledge, whose tokenizer
    covers the domains, as every model ckl pretrains for a stream does)."""
    from ckl.train.pretrain import PretrainConfig, pretrain

    stream = build_world(WorldConfig(**CPT_WORLD))
    stream_dir = tmp_path_factory.mktemp("cpt_stream")
    stream.save(stream_dir)
    model_dir = tmp_path_factory.mktemp("cpt_model") / "base"
    pretrain(stream, PretrainConfig(**TINY_PRETRAIN), accelerator, model_dir)
    return stream_dir, model_dir


def _config(cpt, methods):
    stream_dir, model_dir = cpt
    return ExperimentConfig.from_dict({"name": "cpt", "stream": str(stream_dir), "model": str(model_dir), "methods": methods,
                                       "eval": {"kinds": ["statement"]}})


@pytest.fixture(scope="module")
def cpt_run(tmp_path_factory, cpt):
    run_dir = tmp_path_factory.mktemp("cpt_run")
    train = {"epochs": 4, "lr": 3e-3}
    run_experiment(_config(cpt, [{"name": "naive", "train": train}, {"name": "replay", "train": train, "replay": {"fraction": 0.5}}]),
                   run_dir, say=lambda m: None)
    return run_dir


@pytest.mark.heavy  # started first (tests/conftest.py)
def test_every_row_scores_every_domains_held_out_text(cpt_run):
    with Store(cpt_run / "results.sqlite") as store:
        for method in ("naive", "replay"):
            infos = store.stage_infos(method, 0)
            assert [i["row"] for i in infos] == [0, 1, 2]
            assert all(set(i["notes"]["domain_nll"]) == {"1", "2"} for i in infos)


def test_training_on_a_domain_learns_it_and_training_on_the_next_forgets_part_of_it(cpt_run):
    with Store(cpt_run / "results.sqlite") as store:
        L = [i["notes"]["domain_nll"] for i in store.stage_infos("naive", 0)]
    assert L[1]["1"] < L[0]["1"] - 1.0  # stage 1 teaches its domain (nats per token)
    assert L[2]["2"] < L[1]["2"] - 1.0  # and stage 2 its own
    assert L[2]["1"] > L[1]["1"] + 0.05  # plain fine-tuning on domain 2 gives back part of domain 1


def test_replaying_earlier_domains_text_forgets_less_of_them_than_plain_fine_tuning(cpt_run):
    with Store(cpt_run / "results.sqlite") as store:
        summary = summarize(store)
    naive, replay = summary["naive"], summary["replay"]
    assert naive["domain_gain"] > 1.0 and replay["domain_gain"] > 1.0
    assert replay["domain_forgetting"] < naive["domain_forgetting"] * 0.7, (replay["domain_forgetting"], naive["domain_forgetting"])
    assert naive["domain_ppl"] > 1.0


def test_the_table_shows_domain_columns_only_for_runs_that_have_domains(cpt_run, tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    shown = CliRunner().invoke(app, ["show", str(cpt_run), "--markdown"])
    assert shown.exit_code == 0, shown.output
    assert "dom. gain" in shown.output and "dom. fgt" in shown.output and "dom. ppl" in shown.output
    # a stream with no facts to gain has no FUAR, and no "no gain" that would read as a result
    assert "FUAR" not in shown.output.split("Unlearning")[0] and "no gain" not in shown.output

    from ckl.report.table import markdown_table

    plain = {"m": {"seeds": [0], "retention": 0.5, "fuar": None}}
    assert "dom. gain" not in markdown_table(plain) and "FUAR" in markdown_table(plain)


def test_a_method_that_cannot_train_on_a_corpus_is_refused_unless_it_may_skip_it(cpt, tmp_path):
    with pytest.raises(InputError, match="corpus") as info:
        run_experiment(_config(cpt, [{"name": "rome"}]), tmp_path / "run", say=lambda m: None)
    assert info.value.field == "methods[0]" and not (tmp_path / "run").exists()


def test_a_model_whose_vocabulary_lacks_the_domains_words_is_refused_before_anything_is_written(cpt, tiny_model_dir, tmp_path):
    stream_dir, _ = cpt
    with pytest.raises(InputError, match="unknown token") as info:
        run_experiment(_config((stream_dir, tiny_model_dir), [{"name": "naive"}]), tmp_path / "run", say=lambda m: None)
    assert info.value.field == "tokenizer" and not (tmp_path / "run").exists()
