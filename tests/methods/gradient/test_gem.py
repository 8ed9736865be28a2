import itertools

import pytest
import torch

from ckl.methods.gradient.agem import flat_grad, memory_gradient, project_agem, trainable
from ckl.methods.base import StageContext, build_method
from ckl.methods.gradient.gem import Gem, GemConfig, project_gem, solve_dual


def _objective(M, b, v):
    return float(0.5 * v @ M @ v + b @ v)


def _brute_force(M, b, margin):
    """min 1/2 v^T M v + b^T v s.t. v >= margin, by trying every set of free variables."""
    k = len(b)
    shifted = b + M @ torch.full((k,), margin, dtype=M.dtype)
    best = None
    for size in range(k + 1):
        for free in itertools.combinations(range(k), size):
            u = torch.zeros(k, dtype=M.dtype)
            if free:
                idx = list(free)
                u[idx] = torch.linalg.lstsq(M[idx][:, idx], -shifted[idx].unsqueeze(1), driver="gelsd").solution.flatten()
            if (u < -1e-9).any() or ((M @ u + shifted) < -1e-9).any():
                continue
            v = u + margin
            if best is None or _objective(M, b, v) < _objective(M, b, best) - 1e-12:
                best = v
    return best


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_dual_solver_matches_brute_force_and_satisfies_kkt(margin):
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        k = 1 + trial % 6
        p = 3 if trial % 3 == 0 else 12  # p < k: a singular Gram matrix
        G = torch.randn(k, p, generator=gen, dtype=torch.float64)
        g = torch.randn(p, generator=gen, dtype=torch.float64)
        M, b = G @ G.T, G @ g
        v = solve_dual(M, b, margin)
        grad = M @ v + b
        assert (v >= margin - 1e-9).all()
        assert (grad >= -1e-8).all()  # dual feasibility: every constraint holds after projection
        assert torch.allclose((v - margin) * grad, torch.zeros_like(v), atol=1e-8)  # complementarity
        expected = _brute_force(M, b, margin)
        assert _objective(M, b, v) == pytest.approx(_objective(M, b, expected), abs=1e-8)
        assert torch.allclose(G.T @ v, G.T @ expected, atol=1e-6)  # the projected gradient is unique


def test_projection_satisfies_every_constraint():
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        G = torch.randn(4, 50, generator=gen)
        g = torch.randn(50, generator=gen) - 2 * G.mean(0)  # conflict with the memories
        projected = project_gem(g, G)
        assert (G @ projected >= -1e-6 * G.norm(dim=1) * projected.norm()).all()


def test_with_one_constraint_gem_is_agem():
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        g_ref, g = torch.randn(30, generator=gen), torch.randn(30, generator=gen)
        assert torch.allclose(project_gem(g, g_ref.unsqueeze(0)), project_agem(g, g_ref), atol=1e-5)


def test_gem_gradient_raises_no_cohort_memory_loss_on_the_tiny_model(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Gem(GemConfig(margin=0.0))
    stage1, stage2 = tiny_stream.stages[:2]
    ctx1 = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=stage1)
    part.prepare(model, ctx1)
    part.finish(model, ctx1)
    part.observe(model, stage1, ctx1)
    assert sorted(part.cohorts) == [0, 1]  # base knowledge and stage 1's facts
    ctx2 = StageContext(tiny_stream.relations, tiny_stream.base, 2, 0, tokenizer, accelerator, change=stage2)
    part.prepare(model, ctx2)
    params = trainable(model)
    model.eval()
    projected_steps = 0
    for step in range(6):
        model.zero_grad(set_to_none=True)
        batches = part.memory_batches(step)
        G = torch.stack([memory_gradient(model, b, params) for b in batches])
        raw = G[1] - G[0]  # for the newer cohort, against the base knowledge
        for p, g in zip(params, torch.split(raw, [p.numel() for p in params])):
            p.grad = g.view_as(p).clone()
        before = part.projected
        part.filter_gradients(model, step)
        projected_steps += part.projected - before
        g = flat_grad(params)
        assert (G @ g >= -1e-6 * G.norm(dim=1) * raw.norm()).all()
        assert g.norm() > 1e-3 * raw.norm()
    assert projected_steps > 0


def test_gem_state_round_trips(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    stage1 = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=stage1)
    part = Gem(GemConfig())
    part.prepare(model, ctx)
    part.observe(model, stage1, ctx)
    held = {f.id: f for b in part.cohorts.values() for f in b.facts}
    assert all(held[r.fact.id].object == r.fact.object for r in stage1.update)
    assert not {f.id for f in stage1.forget} & set(held)
    clone = Gem(GemConfig())
    clone.load_state_dict(part.state_dict())
    assert {c: b.facts for c, b in clone.cohorts.items()} == {c: b.facts for c, b in part.cohorts.items()}


def test_gem_config_rejects_a_negative_margin():
    with pytest.raises(ValueError, match="margin"):
        build_method("gem", {"gem": {"margin": -1.0}})
