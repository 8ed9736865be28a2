import pytest

from ckl.run.config import ExperimentConfig
from ckl.core.errors import DivergenceError, InputError
from ckl.run.experiment import run_experiment
from ckl.methods.base import TrainingMethod
from ckl.results.store import Store


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory, tiny_stream):
    d = tmp_path_factory.mktemp("stream")
    tiny_stream.save(d)
    return d


def _config(stream_dir, model_dir, methods=None, **extra):
    methods = methods or [{"name": "naive", "train": {"epochs": 3, "lr": 3e-3}}, {"name": "replay", "train": {"epochs": 3, "lr": 3e-3}}]
    methods = [{"skip": ["forget"], **m} for m in methods]
    return ExperimentConfig.from_dict({
        "name": "t",
        "stream": str(stream_dir),
        "model": str(model_dir),
        "methods": methods,
        "eval": {"kinds": ["statement", "question"]},
        **extra,
    })


def _all_outcomes(run_dir):
    with Store(run_dir / "results.sqlite") as store:
        return {
            (m, s, row): [(o["probe_id"], o["em"], o["rank_ok"], round(o["logprob"], 4), o["predicted"]) for o in store.outcomes(m, s, row)]
            for m, s in store.runs() for row in store.completed_rows(m, s)
        }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, stream_dir, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("full")
    run_experiment(_config(stream_dir, tiny_model_dir), run_dir, say=lambda m: None)
    return run_dir


def test_every_stage_of_every_method_is_stored_with_per_probe_outcomes(full_run, tiny_stream):
    with Store(full_run / "results.sqlite") as store:
        assert store.runs() == [("naive", 0), ("replay", 0)]
        n_probes = len(store.probes())
        for method, seed in store.runs():
            assert store.completed_rows(method, seed) == [0, 1, 2]
            assert len(store.outcomes(method, seed, 2)) == n_probes
            infos = store.stage_infos(method, seed)
            assert infos[1]["notes"]["not_applied"] == {"forget": len(tiny_stream.stages[0].forget)}
            # what the method keeps beside the weights: nothing for naive, the buffer's facts for replay
            assert (infos[1]["notes"]["state_bytes"] > 1000) == (method == "replay"), infos[1]["notes"]
            assert infos[1]["tokens_seen"] > 0 and infos[1]["perplexity"] > 1
        acc = store.accuracy("naive", 0)
        assert acc[0]["invariant"] >= 0.9  # the base model knows K0
        assert acc[1]["stage1"] > acc[0]["stage1"]  # stage 1 was learned


def test_running_again_resumes_instead_of_recomputing(full_run, stream_dir, tiny_model_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a completed run must not train again")

    monkeypatch.setattr(TrainingMethod, "apply", boom)
    before = _all_outcomes(full_run)
    run_experiment(_config(stream_dir, tiny_model_dir), full_run, say=lambda m: None)
    assert _all_outcomes(full_run) == before


def test_interrupted_run_resumes_to_the_same_results(tmp_path, full_run, stream_dir, tiny_model_dir, monkeypatch):
    real_apply = TrainingMethod.apply
    calls = {"n": 0}

    def crash_on_second_stage(self, model, change, ctx):
        calls["n"] += 1
        if self.name == "replay" and change.stage == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return real_apply(self, model, change, ctx)

    monkeypatch.setattr(TrainingMethod, "apply", crash_on_second_stage)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(stream_dir, tiny_model_dir), tmp_path, say=lambda m: None)
    with Store(tmp_path / "results.sqlite") as store:
        assert store.completed_rows("replay", 0) == [0, 1]
    monkeypatch.setattr(TrainingMethod, "apply", real_apply)
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir), tmp_path, say=messages.append)
    assert any("resuming after stage 1" in m for m in messages)
    assert _all_outcomes(tmp_path) == _all_outcomes(full_run)


def test_a_different_experiment_cannot_reuse_a_run_directory(full_run, stream_dir, tiny_model_dir):
    with pytest.raises(InputError, match="different experiment") as info:
        run_experiment(_config(stream_dir, tiny_model_dir, eval={"kinds": ["statement"]}), full_run, say=lambda m: None)
    assert info.value.field == "eval"
    changed = [{"name": "naive", "train": {"epochs": 4, "lr": 3e-3}}]
    with pytest.raises(InputError, match="already ran here with other options"):
        run_experiment(_config(stream_dir, tiny_model_dir, methods=changed), full_run, say=lambda m: None)


def test_methods_can_be_added_to_a_run_and_finished_rows_are_reused(tmp_path, full_run, stream_dir, tiny_model_dir, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    before = _all_outcomes(run)
    trained = []
    real_apply = TrainingMethod.apply

    def record(self, model, change, ctx):
        trained.append(self.name)
        return real_apply(self, model, change, ctx)

    monkeypatch.setattr(TrainingMethod, "apply", record)
    methods = [{"name": "naive", "train": {"epochs": 3, "lr": 3e-3}}, {"name": "lora", "train": {"epochs": 1, "lr": 3e-3}}]
    run_experiment(_config(stream_dir, tiny_model_dir, methods=methods), run, say=lambda m: None)
    assert trained == ["lora", "lora"]  # naive was finished already; replay's rows stay
    after = _all_outcomes(run)
    assert {k: v for k, v in after.items() if k[0] != "lora"} == before
    assert any(k[0] == "lora" for k in after)


def test_a_diverging_method_is_recorded_as_failed_and_the_others_go_on(tmp_path, stream_dir, tiny_model_dir, monkeypatch):
    real_apply = TrainingMethod.apply

    def diverge(self, model, change, ctx):
        if self.name == "naive":
            raise DivergenceError("loss became nan at step 3 (epoch 0)")
        return real_apply(self, model, change, ctx)

    monkeypatch.setattr(TrainingMethod, "apply", diverge)
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir), tmp_path, say=messages.append)
    with Store(tmp_path / "results.sqlite") as store:
        assert [i["status"] for i in store.stage_infos("naive", 0)] == ["ok", "failed"]
        assert store.completed_rows("replay", 0) == [0, 1, 2]
    assert any("FAILED" in m for m in messages)


def test_method_state_with_tensors_round_trips_through_a_checkpoint(tmp_path):
    import torch

    from ckl.run.experiment import _join_state, _split_state
    from safetensors.torch import save_file

    state = {"ewc": {"fisher.w": torch.arange(6.0).reshape(2, 3), "stages": 2}, "replay": {"seen": 5, "facts": []}}
    data, tensors = _split_state(state)
    assert set(tensors) == {"ewc/fisher.w"}
    save_file(tensors, str(tmp_path / "s.safetensors"))
    back = _join_state(data, tmp_path / "s.safetensors")
    assert back["replay"] == {"seen": 5, "facts": []} and back["ewc"]["stages"] == 2
    assert torch.equal(back["ewc"]["fisher.w"], state["ewc"]["fisher.w"])


def test_a_run_made_before_an_option_existed_still_resumes(tmp_path, full_run, stream_dir, tiny_model_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    with Store(run / "results.sqlite") as store:
        old = store.get_meta("config")
        del old["eval"]["max_candidates"]  # as if written before the option existed (it is at its default)
        store.set_meta("config", old)
    before = _all_outcomes(run)
    run_experiment(_config(stream_dir, tiny_model_dir), run, say=lambda m: None)
    assert _all_outcomes(run) == before


def test_a_run_made_under_earlier_defaults_is_not_extended(tmp_path, full_run, stream_dir, tiny_model_dir):
    """A run stored before the knowledge change has no protocol stamp: its unchanged config
    meant another world and packing, so adding to it would mix two protocols in one table."""
    import shutil

    from ckl.run.experiment import PROTOCOL

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    with Store(run / "results.sqlite") as store:
        assert store.get_meta("protocol") == PROTOCOL
        store.set_meta("protocol", None)
    before = _all_outcomes(run)
    with pytest.raises(InputError, match="earlier ckl whose defaults differ"):
        run_experiment(_config(stream_dir, tiny_model_dir), run, say=lambda m: None)
    assert _all_outcomes(run) == before


def test_a_world_that_cannot_be_built_stops_the_run_before_anything_is_written(tmp_path):
    from ckl.run.config import ExperimentConfig

    config = ExperimentConfig.from_dict({
        "world": {"people": 30, "background_people": 0}, "methods": [{"name": "naive", "skip": ["forget"]}],
    })
    with pytest.raises(InputError) as info:
        run_experiment(config, tmp_path / "run", say=lambda m: None)
    assert info.value.field == "world.min_probe_word_count" and "read fewer times" in info.value.message
    assert not (tmp_path / "run").exists()


def test_a_block_size_above_the_models_context_is_refused_before_anything_is_written(tmp_path, stream_dir, tiny_model_dir):
    from ckl.model import lm

    limit = lm.context_length(tiny_model_dir)
    assert limit == 256
    config = _config(stream_dir, tiny_model_dir, methods=[{"name": "naive", "train": {"epochs": 1, "block_size": limit + 1}}])
    with pytest.raises(InputError, match="above the model's context length") as info:
        run_experiment(config, tmp_path / "run", say=lambda m: None)
    assert info.value.field == "methods[0].train.block_size" and not (tmp_path / "run").exists()
    config = ExperimentConfig.from_dict({"world": {"people": 30}, "pretrain": {"block_size": 1024}, "methods": [{"name": "naive", "skip": ["forget"]}]})
    with pytest.raises(InputError, match="context length of the model ckl pretrains") as info:
        run_experiment(config, tmp_path / "run", say=lambda m: None)
    assert info.value.field == "pretrain.block_size" and not (tmp_path / "run").exists()


def test_a_base_that_misses_its_target_stops_the_run_unless_allowed_and_then_every_surface_says_so(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.results.store import Store

    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: weak\nworld: {seed: 1, people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 2, "
        "general_train: 40, general_heldout: 20, background_people: 6, min_probe_word_count: 0}\n"
        "pretrain: {n_layer: 1, n_embd: 16, n_head: 2, max_epochs: 2, eval_every: 1}\n"
        "methods: [{name: naive, skip: [forget], train: {epochs: 1}}]\neval: {kinds: [statement]}\n"
    )
    runner, run = CliRunner(), tmp_path / "run"
    stopped = runner.invoke(app, ["run", str(exp), "--out", str(run)])
    assert stopped.exit_code == 1, stopped.output
    assert "missed its target" in stopped.output and "--allow-weak-base" in stopped.output and "max_epochs 2" in stopped.output
    with Store(run / "results.sqlite") as store:
        assert store.runs() == []  # no method ran on it
    again = runner.invoke(app, ["run", str(exp), "--out", str(run)])  # the cached base is checked too
    assert again.exit_code == 1 and "missed its target" in again.output

    allowed = runner.invoke(app, ["run", str(exp), "--out", str(run), "--allow-weak-base"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: the base model missed its pretraining target" in runner.invoke(app, ["show", str(run), "--markdown"]).output
    report = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and "missed its pretraining target" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_a_run_records_threads_cpu_and_versions_and_shows_them(tmp_path):
    import torch
    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.results.store import Store

    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: env\nworld: {seed: 1, people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 2, "
        "general_train: 40, general_heldout: 20, background_people: 6, min_probe_word_count: 0}\n"
        "pretrain: {n_layer: 1, n_embd: 16, n_head: 2, max_epochs: 1, eval_every: 1}\nallow_weak_base: true\n"
        "methods: [{name: naive, skip: [forget], train: {epochs: 1}}]\neval: {kinds: [statement]}\n"
    )
    runner, run = CliRunner(), tmp_path / "run"
    assert runner.invoke(app, ["run", str(exp), "--out", str(run)]).exit_code == 0
    with Store(run / "results.sqlite") as store:
        (env,) = store.get_meta("environments")
    assert env["torch_threads"] == torch.get_num_threads() and env["versions"]["torch"] == torch.__version__
    assert env["cpu_count"] >= 1 and env["python"]
    shown = runner.invoke(app, ["show", str(run), "--markdown"]).output
    assert f"measured with {torch.get_num_threads()} thread(s), torch {torch.__version__}" in shown
    threads = torch.get_num_threads()
    try:  # resuming on another thread count is recorded beside the first
        torch.set_num_threads(1 if threads > 1 else 2)
        assert runner.invoke(app, ["run", str(exp), "--out", str(run)]).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    with Store(run / "results.sqlite") as store:
        assert [e["torch_threads"] for e in store.get_meta("environments")] == [threads, 1 if threads > 1 else 2]
    report = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and "; then " in (tmp_path / "r.html").read_text(encoding="utf-8")
