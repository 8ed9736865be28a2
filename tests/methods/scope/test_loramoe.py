"""LoRAMoE: LoRA experts with a router leave the frozen model's outputs unchanged when
attached, the balance loss spreads the routing over the experts, only experts and routers
train, and they survive a checkpoint."""

import math
import random

import pytest
import torch
from safetensors.torch import save_file

from ckl.model import lm
from ckl.methods.base import StageContext, TrainingMethod, build_method
from ckl.methods.scope.loramoe import NAME, LoraMoe, LoraMoeConfig, balance_loss, expert_load
from ckl.data.stream import render_documents
from ckl.train.batching import pack
from ckl.train.loop import TrainConfig


def _ctx(stream, tokenizer, accelerator):
    change = stream.stages[0]
    return change, StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)


def _prompt(vocab_size):
    return torch.randint(3, vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))


class SkewedStart(LoraMoe):
    """Routers sharpened 20x at the start, so that the load starts uneven."""

    def prepare(self, model, ctx):
        model = super().prepare(model, ctx)
        with torch.no_grad():
            for layer in self.module.layers.values():
                layer.router.mul_(20.0)
        return model


def _load_entropy(model, tokenizer, change, stream) -> float:
    """Mean over layers of the normalised entropy of the experts' load on the stage's text."""
    input_ids, mask, _ = pack(tokenizer, render_documents(change.taught(), stream.relations, random.Random(0)), 128)
    mixture = getattr(model, NAME)
    mixture.train()
    with torch.enable_grad():
        model(input_ids=input_ids, attention_mask=mask)
    gates, mixture.gates = mixture.gates, []
    mixture.eval()
    loads = [expert_load(g.detach(), mask) for g in gates]
    return sum(float(-(p * p.log()).sum()) / math.log(len(p)) for p in loads) / len(loads)


def test_attached_experts_leave_outputs_unchanged(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        before = model(prompt).logits
    _, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model = LoraMoe(LoraMoeConfig()).prepare(model, ctx)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, before, atol=0, rtol=0)
    experts = getattr(model, NAME).targets
    assert experts == [f"transformer.h.{i}.mlp.{n}" for i in range(model.config.n_layer) for n in ("c_fc", "c_proj")]


def test_balance_loss_spreads_routing_and_base_stays_frozen(tiny_stream, tiny_model_dir, accelerator):
    entropy = {}
    for balance in (0.0, 1.0):
        model, tokenizer = lm.load(tiny_model_dir)
        base = {n: p.detach().clone() for n, p in model.named_parameters()}
        change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
        method = TrainingMethod("loramoe", [SkewedStart(LoraMoeConfig(balance=balance))], TrainConfig(epochs=10, lr=3e-3))
        model, _ = method.apply(model, change, ctx)
        entropy[balance] = _load_entropy(model, tokenizer, change, tiny_stream)
        now = dict(model.named_parameters())
        assert all(torch.equal(now[n], base[n]) for n in base)
        assert any(p.abs().sum() > 0 for n, p in now.items() if n.endswith(".B"))
    # measured: 0.954 without the loss, 0.979 with it: the loss more than halves the
    # distance to an even load (1 - entropy: 0.046 -> 0.021)
    assert 1 - entropy[1.0] < 0.6 * (1 - entropy[0.0]), entropy
    assert entropy[1.0] > 0.95, entropy


def test_balance_loss_is_zero_for_even_load_and_e_minus_one_for_a_collapsed_router():
    even = torch.full((2, 5, 4), 0.25)
    assert balance_loss([even], None).item() == pytest.approx(0.0, abs=1e-9)
    collapsed = torch.zeros(2, 5, 4)
    collapsed[..., 0] = 1.0
    assert balance_loss([collapsed], None).item() == pytest.approx(3.0)
    mask = torch.ones(2, 5)
    mask[:, 3:] = 0  # padding does not count
    skew = even.clone()
    skew[:, 3:] = collapsed[:, 3:]
    assert balance_loss([skew], mask).item() == pytest.approx(0.0, abs=1e-9)


def test_experts_survive_save_and_reload(tiny_stream, tiny_model, accelerator, tmp_path):
    model, tokenizer = tiny_model
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    method = build_method("loramoe", {"train": {"epochs": 2, "lr": 3e-3}})
    model, _ = method.apply(model, change, ctx)
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        trained = model(prompt).logits
    restored = checkpoint_round_trip("loramoe", method, model, tokenizer, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(restored(prompt).logits, trained)


def checkpoint_round_trip(name, method, model, tokenizer, tmp_path):
    """The model as a resumed run gets it back: saved and loaded as a checkpoint (the
    attached experts are not in the saved weights), then re-attached by a fresh method
    that loaded the old one's state through safetensors."""
    from ckl.run.experiment import _join_state, _split_state

    lm.save(model, tokenizer, tmp_path / "ckpt")
    data, tensors = _split_state(method.state_dict())
    save_file(tensors, str(tmp_path / "state.safetensors"))
    fresh = build_method(name, {})
    fresh.load_state_dict(_join_state(data, tmp_path / "state.safetensors"))
    loaded, _ = lm.load(tmp_path / "ckpt")
    assert not hasattr(loaded, fresh.parts[0].module_name)
    return fresh.restore(loaded).eval()


@pytest.mark.parametrize("bad", [{"experts": 1}, {"r": 0}, {"alpha": 0}, {"balance": -1.0}, {"target_modules": []}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("loramoe", {"loramoe": bad})


def _balance_on_two_processes(rank, port, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        router = torch.randn(8, 4, requires_grad=True)
        x, mask = torch.randn(6, 5, 8), torch.ones(6, 5)
        mask[:, 4:] = 0
        mine = slice(3 * rank, 3 * rank + 3)  # this process's half of the batch
        loss = balance_loss([torch.softmax(x[mine] @ router, -1)], mask[mine], all_processes=True)
        loss.backward()
        grad = router.grad.clone()
        dist.all_reduce(grad)  # what DDP does, then divides by the number of processes
        if rank == 0:
            torch.save({"loss": loss.detach(), "grad": grad / 2, "x": x, "mask": mask}, out)
    finally:
        dist.destroy_process_group()


def test_balance_loss_over_two_processes_is_the_whole_batchs(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a child forked after torch started its thread pool can hang forever
    mp.start_processes(_balance_on_two_processes, args=(port, str(tmp_path / "out.pt")), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "out.pt")
    torch.manual_seed(0)
    router = torch.randn(8, 4, requires_grad=True)
    loss = balance_loss([torch.softmax(got["x"] @ router, -1)], got["mask"])
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach())
    torch.testing.assert_close(got["grad"], router.grad)
