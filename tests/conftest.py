"""Shared fixtures: a tiny synthetic world and a tiny model pretrained on it (built once
per test session, in a few seconds, with nothing downloaded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs one pytest-xdist worker per core: each computes with one thread
    # (more would oversubscribe the cores), and so do the processes a test starts.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # and without the 80 x 24 terminal xdist gives its workers: ckl's piped output is as
    # wide as in a plain pytest run, so a long tmp path does not wrap a message a test reads
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    import torch

    torch.set_num_threads(1)

# A tiny world reads each probe word only a few times per epoch; the probe-word check
# (WorldConfig.min_probe_word_count) is for worlds of the default size. The tiny world and
# model keep the recipe the suite's mechanism tests were written against (names drawn with
# repeats allowed, one biography per epoch): the default's changes are tested on their own.
TINY_WORLD = dict(seed=1, people=12, stages=2, learn_per_stage=4, update_per_stage=4, forget_per_stage=2, general_train=40, general_heldout=20,
                  background_people=6, min_probe_word_count=0,
                  distinct_first_names=False)
TINY_PRETRAIN = dict(n_layer=3, n_embd=64, n_head=2, lr=3e-3, batch_size=4, max_epochs=250, target=0.95, knowledge_target=0.0, eval_every=10, biographies=1)


@pytest.fixture(scope="session")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture(scope="session")
def tiny_stream():
    from ckl.data.world import WorldConfig, build_world

    return build_world(WorldConfig(**TINY_WORLD))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_stream, accelerator):
    """A model that knows the tiny world's base facts (the pretraining target is asserted
    in tests/train/test_pretrain.py)."""
    from ckl.train.pretrain import PretrainConfig, pretrain

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("model") / "base"
        _, _, result = pretrain(tiny_stream, PretrainConfig(**TINY_PRETRAIN), accelerator, out)
        out.joinpath("pretrain_result.txt").write_text(f"{result.accuracy} {result.epochs}")
        return out
    # Under pytest-xdist the workers share one copy (the pattern xdist documents): the first
    # to need it pretrains it (one thread, as every worker computes: the same model), the
    # others wait for it instead of spending ~25 s each on the same pretraining.
    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / "tiny_model" / "base"
    out.parent.mkdir(exist_ok=True)
    with FileLock(str(out.parent / "lock")):
        if not (out / "pretrain_result.txt").exists():
            _, _, result = pretrain(tiny_stream, PretrainConfig(**TINY_PRETRAIN), accelerator, out)
            out.joinpath("pretrain_result.txt").write_text(f"{result.accuracy} {result.epochs}")
    return out


@pytest.fixture
def tiny_model(tiny_model_dir):
    from ckl.model import lm

    return lm.load(tiny_model_dir)


def pytest_collection_modifyitems(config, items):
    """Tests marked `heavy` (a minute or more at one thread) run first: scripts/test.sh
    hands whole modules to its workers as they free up, and a long module handed out last
    would keep one core busy while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: the rest keep their order
