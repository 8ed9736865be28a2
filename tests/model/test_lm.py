import pytest
import torch

from ckl.model import lm
from ckl.core.errors import InputError


def _small():
    tok = lm.make_tokenizer(["Alda Venmore was born in Port Elmira .", "It was sunny ."])
    return lm.tiny_model(tok, lm.TinyModelConfig(n_layer=1, n_embd=16, n_head=2)), tok


def test_saved_model_loads_back_with_identical_weights(tmp_path):
    model, tok = _small()
    lm.save(model, tok, tmp_path / "m")
    loaded, tok2 = lm.load(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok2("Port Elmira").input_ids == tok("Port Elmira").input_ids


def test_multi_word_objects_are_several_word_tokens():
    _, tok = _small()
    assert tok.convert_ids_to_tokens(tok(" Port Elmira", add_special_tokens=False).input_ids) == ["Port", "Elmira"]


def test_pickle_only_checkpoint_is_refused_without_opt_in(tmp_path):
    model, tok = _small()
    d = tmp_path / "pickled"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert not list(d.glob("*.safetensors"))
    with pytest.raises(InputError, match="pickle"):
        lm.load(d)
    loaded, _ = lm.load(d, allow_pickle=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_missing_or_empty_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        lm.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        lm.load(tmp_path / "empty")


def test_save_replaces_an_existing_model_atomically(tmp_path):
    model, tok = _small()
    lm.save(model, tok, tmp_path / "m")
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    lm.save(model, tok, tmp_path / "m")
    loaded, _ = lm.load(tmp_path / "m")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tiny_model_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_head"):
        lm.TinyModelConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        lm.TinyModelConfig(n_layer=0)
    with pytest.raises(ValueError, match="n_inner"):
        lm.TinyModelConfig(n_inner=-1)


def test_n_inner_sets_the_mlp_width_the_editors_write_to():
    from ckl.model.layers import key_size, mlp_output_projection
    from ckl.train.config import PretrainConfig

    tok = lm.make_tokenizer(["a b c"])
    wide = lm.tiny_model(tok, lm.TinyModelConfig(n_layer=1, n_embd=16, n_head=2, n_inner=48))
    default = lm.tiny_model(tok, lm.TinyModelConfig(n_layer=1, n_embd=16, n_head=2))
    assert key_size(mlp_output_projection(wide, 0)) == 48
    assert key_size(mlp_output_projection(default, 0)) == 64  # 4 x n_embd, GPT-2's
    with pytest.raises(ValueError, match="n_inner"):
        PretrainConfig(n_inner=-2)
