"""MoCL-P: each stage adds a LoRA module and a key (the model unchanged by it); earlier
modules and keys never move; the matching loss pulls the new key towards the stage's
inputs; pruned modules are exactly left out at evaluation; a checkpoint restores them."""

import pytest
import torch
import torch.nn.functional as F

from ckl.methods.base import StageContext, build_method
from ckl.model import lm

PROMPT = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))


def _apply(method, model, stream, change, tokenizer, accelerator):
    ctx = StageContext(stream.relations, stream.base, change.stage, 0, tokenizer, accelerator, change=change)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(change.stage)
        return method.apply(model, change, ctx)[0]


def test_stages_add_a_module_each_and_freeze_the_earlier_ones(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("mocl", {"train": {"epochs": 5, "lr": 1e-2}, "mocl": {"prune": 0.0}})
    part = method.parts[0]
    model = _apply(method, model, tiny_stream, tiny_stream.stages[0], tokenizer, accelerator)
    first = {k: (layer.A_new.detach().clone(), layer.B_new.detach().clone(), layer.key_new.detach().clone()) for k, layer in part.module.layers.items()}
    assert part.stages() == 1 and all(b.abs().sum() > 0 for _, b, _ in first.values())
    model = _apply(method, model, tiny_stream, tiny_stream.stages[1], tokenizer, accelerator)
    assert part.stages() == 2
    for k, layer in part.module.layers.items():
        a, b, key = first[k]
        assert torch.equal(layer.A_old[0], a) and torch.equal(layer.B_old[0], b) and torch.equal(layer.keys_old[0], key), "stage 1's module frozen"
        assert layer.B_new.abs().sum() > 0, "stage 2's module trained"


def test_the_matching_loss_pulls_the_new_key_towards_the_stage_inputs(tiny_stream, tiny_model_dir, accelerator):
    cos = {}
    for match in (0.0, 1.0):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method("mocl", {"train": {"epochs": 5, "lr": 1e-2}, "mocl": {"match": match}})
        model = _apply(method, model, tiny_stream, tiny_stream.stages[0], tokenizer, accelerator)
        part = method.parts[0]
        name = part.module.targets[0]
        seen = []
        handle = dict(model.named_modules())[name].register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
        with torch.no_grad():
            for doc in ["{} {}".format(f.subject, f.object) for f in tiny_stream.stages[0].learn]:
                model(**tokenizer(doc, return_tensors="pt"))
        handle.remove()
        key = part.module.layers[name.replace(".", "__")].key_new
        cos[match] = float((F.normalize(torch.cat(seen), dim=-1) @ F.normalize(key.detach(), dim=0)).mean())
    # measured (seed 0, one thread): mean cosine of the first layer's key with the stage's inputs
    # 0.087 without the matching loss (only the next-token loss moves it), 0.325 with weight 1
    assert cos[1.0] > cos[0.0] + 0.15, cos


def test_pruned_modules_are_left_out_exactly(tiny_stream, tiny_model_dir, accelerator):
    from ckl.methods.scope.mocl import StageModules

    layer = StageModules(6, 4, 2, 1.0, temperature=0.1, prune=0.4)
    layer.add_stage()
    layer.add_stage()
    with torch.no_grad():
        layer.B_old.normal_()
        layer.B_new.normal_()
    layer.eval()
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    out, weights = layer(x)
    layer.prune = 0.0
    full, raw = layer(x)
    keep = raw >= 0.4
    assert layer.pruned[0] == int((~keep).sum()) > 0
    expected = torch.einsum("bts,bto->bto", torch.ones_like(raw[..., :1]), torch.zeros_like(out))
    for s in range(2):
        contribution = torch.einsum("bti,ri->btr", x, torch.cat([layer.A_old, layer.A_new[None]])[s]) @ torch.cat([layer.B_old, layer.B_new[None]])[s].T
        expected = expected + (raw[..., s:s + 1] * keep[..., s:s + 1] / (raw * keep).sum(-1, keepdim=True)) * contribution
    torch.testing.assert_close(out, expected)


def test_the_modules_come_back_from_a_checkpoint(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("mocl", {"train": {"epochs": 3, "lr": 1e-2}})
    for change in tiny_stream.stages[:2]:
        model = _apply(method, model, tiny_stream, change, tokenizer, accelerator)
    with torch.no_grad():
        expected = model(PROMPT).logits
    fresh = build_method("mocl", {})
    fresh.load_state_dict(method.state_dict())
    bare, _ = lm.load(tiny_model_dir)
    restored = fresh.restore(bare)
    assert fresh.parts[0].stages() == 2
    with torch.no_grad():
        torch.testing.assert_close(restored(PROMPT).logits, expected)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"prune": 1.5}, {"match": -1.0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("mocl", {"mocl": bad})
