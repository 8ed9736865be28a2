"""Knowledge grafting: the stage's update survives only as a rank-r, quantised delta on the
stage-start weights, and the row says how many bytes that delta takes."""

import pytest
import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, build_method
from ckl.methods.merge.graft import quantise
from ckl.model import lm

TRAIN = {"epochs": 2, "lr": 3e-3}


def _train(expression, options, stream, model_dir, accelerator):
    model, tokenizer = lm.load(model_dir)
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0])
    method = build_method(expression, {"train": TRAIN, **options})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, stream.stages[0], ctx)
    return method, dict(model.named_parameters())


def test_quantisation_rounds_each_row_to_its_own_scale():
    x = torch.tensor([[1.0, -0.5, 0.25], [100.0, 3.0, -7.0]])
    q, size = quantise(x, 8)
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    assert (q - x).abs().le(scale / 2 + 1e-6).all()
    assert size == 6 + 2 * 2  # a byte per value, a float16 scale per row
    assert quantise(x, 0)[0] is x


def test_the_grafted_update_has_the_rank_and_the_bytes_asked_for(tiny_stream, tiny_model_dir, accelerator):
    start = dict(lm.load(tiny_model_dir)[0].named_parameters())
    _, plain = _train("naive", {}, tiny_stream, tiny_model_dir, accelerator)
    method, grafted = _train("graft", {"graft": {"rank": 2, "bits": 0}}, tiny_stream, tiny_model_dir, accelerator)
    for name, p in grafted.items():
        delta = (p - start[name]).detach()
        if delta.dim() == 2:
            assert torch.linalg.matrix_rank(delta, atol=1e-5).item() <= 2, name
            # the best rank-2 approximation of the plain update (the same training, seed and data)
            u, s, vh = torch.linalg.svd((plain[name] - start[name]).detach(), full_matrices=False)
            torch.testing.assert_close(delta, (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(delta, (plain[name] - start[name]).detach())
    notes = method.row_notes()
    assert notes["graft_bytes"] < notes["graft_dense_bytes"] / 4 and 0 < notes["graft_energy"] < 1


def test_with_full_rank_and_no_quantisation_grafting_is_plain_training(tiny_stream, tiny_model_dir, accelerator):
    _, plain = _train("naive", {}, tiny_stream, tiny_model_dir, accelerator)
    method, grafted = _train("graft", {"graft": {"rank": 10_000, "bits": 0}}, tiny_stream, tiny_model_dir, accelerator)
    for name, p in grafted.items():
        torch.testing.assert_close(p, plain[name], atol=1e-5, rtol=1e-5)
    assert method.row_notes()["graft_energy"] == pytest.approx(1.0)


@pytest.mark.parametrize(("options", "field"), [({"rank": 0}, "rank"), ({"bits": 1}, "bits"), ({"bits": 32}, "bits")])
def test_bad_options_are_refused_naming_them(options, field):
    with pytest.raises(ConfigError, match=field):
        build_method("graft", {"graft": options})
