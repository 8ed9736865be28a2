"""Post-step merges (interpolation, task arithmetic, LiNeS) and weight averaging (EMA):
each sets the stage's result from its start and its trained end as its paper says."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.merge.interpolate import Interpolate, InterpolateConfig
from ckl.model.layers import find_blocks, parameter_depths
from ckl.methods.merge.lines import LinesConfig
from ckl.methods.merge.task_arithmetic import TaskArithmeticConfig

TRAIN = {"epochs": 2, "lr": 3e-3}


def _train(expression, stream, model_dir, accelerator, options=None):
    from ckl.model import lm

    model, tokenizer = lm.load(model_dir)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    change = stream.stages[0]
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)
    method = build_method(expression, {"train": TRAIN, **(options or {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, change, ctx)
    return start, model.state_dict()


@pytest.fixture(scope="module")
def plain(tiny_stream, tiny_model_dir, accelerator):
    """(start, end) weights of plain fine-tuning on stage 1."""
    return _train("naive", tiny_stream, tiny_model_dir, accelerator)


def _perturbed_stage(part, model):
    """Run a post-step part around a fake "training" that moves every weight."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    part.prepare(model, None)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    end = {k: v.clone() for k, v in model.state_dict().items()}
    part.finish(model, None)
    return start, end, model.state_dict()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_interpolation_lands_at_alpha_between_start_and_trained_weights(alpha, tiny_model):
    model, _ = tiny_model
    start, end, result = _perturbed_stage(Interpolate(InterpolateConfig(alpha=alpha)), model)
    for k in start:
        torch.testing.assert_close(result[k], (1 - alpha) * start[k] + alpha * end[k])
    if alpha == 0:
        assert all(torch.equal(result[k], start[k]) for k in start)
    if alpha == 1:
        assert all(torch.equal(result[k], end[k]) for k in start)


def test_task_arithmetic_and_full_interpolation_equal_plain_training(plain, tiny_stream, tiny_model_dir, accelerator):
    _, end = plain
    for expression, options in [("task_arithmetic", {"task_arithmetic": {"scale": 1.0}}), ("interpolate", {"interpolate": {"alpha": 1.0}})]:
        _, result = _train(expression, tiny_stream, tiny_model_dir, accelerator, options)
        for k in end:
            assert torch.equal(result[k], end[k]), (expression, k)


def test_task_arithmetic_scales_the_stage_update(plain, tiny_stream, tiny_model_dir, accelerator):
    start, end = plain
    _, result = _train("task_arithmetic", tiny_stream, tiny_model_dir, accelerator, {"task_arithmetic": {"scale": 0.25}})
    for k in start:
        torch.testing.assert_close(result[k] - start[k], 0.25 * (end[k] - start[k]), atol=1e-6, rtol=1e-4)


def test_lines_scales_the_first_layer_update_less_than_the_last(plain, tiny_stream, tiny_model_dir, tiny_model, accelerator):
    start, end = plain
    _, result = _train("lines", tiny_stream, tiny_model_dir, accelerator, {"lines": {"alpha": 0.2, "beta": 0.8}})
    depths, layers = parameter_depths(tiny_model[0])
    assert layers >= 2

    def ratio(depth):  # ||scaled update|| / ||plain update|| over the block's weights
        names = [k for k in depths if depths[k] == depth]
        scaled = torch.sqrt(sum((result[k] - start[k]).pow(2).sum() for k in names))
        full = torch.sqrt(sum((end[k] - start[k]).pow(2).sum() for k in names))
        return float(scaled / full)

    ratios = [ratio(d) for d in range(layers)]
    assert ratios[0] < ratios[-1]
    assert ratios[0] == pytest.approx(0.2, rel=1e-3) and ratios[-1] == pytest.approx(1.0, rel=1e-3)
    assert ratio(-1) == pytest.approx(0.2, rel=1e-3)  # embeddings get alpha


def test_ema_weights_lie_between_the_start_and_the_trained_weights(plain, tiny_stream, tiny_model_dir, accelerator):
    start, end = plain
    _, ema = _train("ema", tiny_stream, tiny_model_dir, accelerator, {"ema": {"decay": 0.8}})
    assert any(not torch.equal(ema[k], end[k]) for k in end)
    # position of the EMA along the start -> end line, per weight tensor that moved
    positions = []
    for k in start:
        step = (end[k] - start[k]).flatten()
        if step.norm() > 0:
            positions.append(float(torch.dot((ema[k] - start[k]).flatten(), step) / step.dot(step)))
    mean = sum(positions) / len(positions)
    assert 0 < mean < 1, mean


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match="alpha"):
        InterpolateConfig(alpha=1.5)
    with pytest.raises(ValueError, match="scale"):
        TaskArithmeticConfig(scale=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        LinesConfig(beta="x")


def test_find_blocks_names_gpt2_blocks_and_rejects_blockless_models(tiny_model):
    prefix, blocks = find_blocks(tiny_model[0])
    assert prefix == "transformer.h" and len(blocks) == tiny_model[0].config.n_layer
    with pytest.raises(ValueError, match="transformer blocks"):
        find_blocks(torch.nn.Linear(2, 2))
