"""The key second moment is computed once per (model, layer, corpus) and then read back."""

import shutil

import torch

from ckl.methods.edit import _covariance as covariance
from ckl.model.layers import key_size, mlp_output_projection


def test_second_moment_is_cached_next_to_the_model(tiny_stream, tiny_model_dir, tmp_path):
    from ckl.model import lm

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    model, tokenizer = lm.load(model_dir)
    texts = covariance.covariance_texts(tiny_stream.base, tiny_stream.relations, tiny_stream.general_train, 50)
    before = covariance.computed
    first = covariance.second_moment(model, tokenizer, 0, texts, model_dir=model_dir)
    path = covariance.cache_path(model_dir, 0, texts)
    assert covariance.computed == before + 1 and path.exists() and path.parent.parent == model_dir
    stamp = path.stat().st_mtime_ns
    second = covariance.second_moment(model, tokenizer, 0, texts, model_dir=model_dir)
    assert covariance.computed == before + 1, "the second call reads the cache"
    assert path.stat().st_mtime_ns == stamp and torch.equal(first, second)
    d = key_size(mlp_output_projection(model, 0))
    assert first.shape == (d, d) and torch.allclose(first, first.T, atol=1e-6)
    assert torch.linalg.eigvalsh(first.double()).min() > -1e-6, "a second moment is positive semi-definite"
    covariance.second_moment(model, tokenizer, 0, texts[:40], model_dir=model_dir)
    assert covariance.computed == before + 2, "another corpus is another statistic"


def test_the_editor_computes_c_once_across_stages(tiny_stream, tiny_model_dir, accelerator, tmp_path):
    from ckl.model import lm
    from ckl.methods.base import StageContext, build_method
    from ckl.data.stream import Change
    from tests.methods.edit.test_rome import edit_of

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    model, tokenizer = lm.load(model_dir)
    method = build_method("rome", {"rome": {"steps": 2, "covariance_samples": 30}})
    before = covariance.computed
    for stage, index in ((1, 0), (2, 7)):
        change = Change(stage, edit=(edit_of(tiny_stream, index),))
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, stage, 0, tokenizer, accelerator, change=change, general_text=tiny_stream.general_train, model_dir=model_dir)
        model, _ = method.apply(model, change, ctx)
    assert covariance.computed == before + 1
    resumed = build_method("rome", {"rome": {"steps": 2, "covariance_samples": 30}})
    resumed.load_state_dict(resumed.state_dict())
    resumed.apply(model, change, ctx)
    assert covariance.computed == before + 1, "a resumed editor reads the base model's C from the cache"
