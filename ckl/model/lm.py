"""Loading, saving and making causal language models.

Any Hugging Face causal LM in a local directory works (`load`). The embedded default is
a tiny GPT-2-style model with a word-level tokenizer that ckl trains from scratch on its
synthetic world (`make_tokenizer`, `tiny_model`); word-level tokens keep every name and
object a short, fixed token sequence, which lets a sub-million-parameter model memorise
hundreds of facts in minutes on a CPU.

Security: weights load only from safetensors unless the caller passes
`allow_pickle=True`; remote code runs only with `trust_remote_code=True`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ckl.core.checks import ConfigError
from ckl.core.errors import InputError
from ckl.data.facts import year_of

EOS, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"


@dataclass
class TinyModelConfig:
    """Shape of the embedded default model (GPT-2 architecture, no dropout; the same
    defaults as `ckl.train.config.PretrainConfig`, which cannot import this module)."""

    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_embd: int = field(default=256, metadata={"help": "hidden width"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_positions: int = field(default=256, metadata={"help": "longest sequence in tokens"})
    n_inner: int = field(default=0, metadata={"help": "MLP hidden width, the keys ROME and MEMIT write to (0 = 4 x n_embd, GPT-2's)"})

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_inner, int) or isinstance(self.n_inner, bool) or self.n_inner < 0:
            raise ConfigError("n_inner", f"n_inner must be an integer >= 0 (0 = 4 x n_embd), got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ConfigError("n_head", f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


def make_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (words and punctuation runs) trained with `tokenizers`.

    Train it on every text of the world, later stages included: the vocabulary must
    contain the names of people the model will only meet in stage j. Knowing a token is
    not knowing a fact: those embeddings stay untrained until the stage teaches them.
    """
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[EOS, PAD, UNK], min_frequency=1)
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD, unk_token=UNK, bos_token=EOS)


def tiny_model(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2-style model sized for `tokenizer`'s vocabulary."""
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner or None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu",  # exact GELU: one fused op, ~15% faster on CPU than gelu_new's tanh chain
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(gpt2)
    return model.eval()


def stream_texts(relations, facts, corpus=()) -> list[str]:
    """The texts a model must be able to encode to be trained and probed on `facts`:
    every subject and object, every candidate, each relation's templates, paraphrases
    and questions (without their "{subject}" slot), and every word of the domain text
    in `corpus` (documents as strings: a corpus is text to learn too)."""
    texts = {t for f in facts for t in (f.subject, f.object)}
    texts |= {word for doc in corpus for word in doc.split()}
    for r in relations.values():
        texts |= set(r.candidates)
        texts |= {t.replace("{subject}", " ").strip() for t in (*r.templates, *r.paraphrases, *r.questions)}
    years = sorted({f.valid_from for f in facts if relations[f.relation].dated})
    texts |= {f"{phrase} {year_of(stage)}," for stage in years for phrase in ("In", "As of")}  # the date phrases (ckl.data.stream.dated_prompt)
    return sorted(t for t in texts if t)


def check_vocabulary(tokenizer, texts, where: str) -> None:
    """Refuse a tokenizer that encodes some of `texts` (as they follow a prompt, after a
    space) to no tokens or to its unknown token: such a model could never be taught or
    scored on them (a word-level vocabulary of another world, or a tokenizer class that
    does not fit the directory's vocabulary).

    Raises:
        InputError: naming `where`, the tokenizer's class and the first texts it cannot encode.
    """
    texts = sorted(set(texts))
    if not texts:
        return
    ids = tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = [t for t, seq in zip(texts, ids) if not seq or (unk is not None and unk in seq)]
    if bad:
        shown = ", ".join(repr(t) for t in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise InputError(where, None, "tokenizer", (
            f"{type(tokenizer).__name__} encodes {len(bad)} of the stream's {len(texts)} words and templates to no tokens "
            f"or to its unknown token ({shown}): the model could not be taught or scored on them. Use a tokenizer whose "
            "vocabulary covers the stream's text (a byte-level BPE covers any text), or pretrain a model on this stream (ckl pretrain)"))


def load_tokenizer(directory: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a local model directory alone (no weights), as `load` reads it
    (a tokenizer without a padding token pads with its end-of-sequence token)."""
    tokenizer = AutoTokenizer.from_pretrained(Path(directory), local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(directory: str | Path, allow_pickle: bool = False, trust_remote_code: bool = False, dtype: torch.dtype | None = None):
    """Load (model, tokenizer) from a local Hugging Face directory, never from a hub.

    Raises:
        InputError: the directory is missing, has no weights, has only pickle weights
            and `allow_pickle` is False, or names Python code of its own (`auto_map` in
            config.json or tokenizer_config.json, on any model_type) and
            `trust_remote_code` is False.
    """
    d = Path(directory)
    safetensors = check_directory(d, allow_pickle, trust_remote_code)
    try:
        return _load(d, safetensors, allow_pickle, trust_remote_code, dtype)
    except ValueError as err:
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise InputError(  # transformers refused to import the directory's own Python files
            str(d / "config.json"), None, "auto_map", "this model needs Python code shipped with it, " + _REMOTE_CODE_HINT,
        ) from None


_REMOTE_CODE_HINT = (
    "which ckl runs only when allowed: for `ckl run`, set `trust_remote_code: true` in the experiment if you "
    "trust it (ckl update never runs a model's own code)"
)


def _remote_code_refusal(d: Path) -> InputError | None:
    """An InputError when config.json or tokenizer_config.json names Python code of the
    model's own (`auto_map`). transformers ignores `auto_map` on a model_type it knows
    when remote code is off, so the model would load with other code than its author's:
    ckl refuses it instead of choosing silently."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((d / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a missing or unreadable file is reported by the loader itself
        if isinstance(config, dict) and config.get("auto_map"):
            known = config.get("model_type") if name == "config.json" else None
            instead = (f"; or delete `auto_map` from {name} to load it with transformers' own {known!r} code"
                       if isinstance(known, str) and known else "")
            return InputError(
                str(d / name), None, "auto_map",
                "this model names Python code shipped with it (`auto_map`), " + _REMOTE_CODE_HINT + instead,
            )
    return None


def check_directory(d: Path, allow_pickle: bool = False, trust_remote_code: bool = False) -> list[Path]:
    """The checks `load` makes before reading anything, so that a run can refuse a bad
    model directory before it writes anything. Returns the safetensors files.

    Raises:
        InputError: as `load`.
    """
    d = Path(d)
    if not d.is_dir():
        raise InputError(str(d), None, None, "model directory not found")
    if not (d / "config.json").exists():
        raise InputError(str(d), None, None, "not a Hugging Face model directory (no config.json)")
    safetensors = list(d.glob("*.safetensors"))
    pickles = [p for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if not safetensors:
        if pickles and not allow_pickle:
            raise InputError(
                str(d), None, None,
                f"only pickle weights found ({pickles[0].name}); pickle files can run arbitrary code when loaded. "
                "Convert them to safetensors (ckl update reads only safetensors), or, for `ckl run`, set "
                "`allow_pickle: true` in the experiment if you trust this file",
            )
        if not pickles:
            raise InputError(str(d), None, None, "no model weights (*.safetensors) in directory")
    if not trust_remote_code and (refusal := _remote_code_refusal(d)) is not None:
        raise refusal
    return safetensors


def context_length(d: str | Path) -> int | None:
    """The longest sequence, in tokens, the model in directory `d` takes (from its
    config.json: n_positions, max_position_embeddings or n_ctx), None when it names none."""
    import json

    try:
        config = json.loads((Path(d) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _load(d: Path, safetensors: list, allow_pickle: bool, trust_remote_code: bool, dtype):
    tokenizer = load_tokenizer(d, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        d,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        use_safetensors=bool(safetensors) or not allow_pickle,
        dtype=dtype,
    )
    return model.eval(), tokenizer


def save(model, tokenizer, directory: str | Path) -> Path:
    """Save as a standard Hugging Face directory (safetensors + tokenizer), atomically:
    written to a temporary sibling and renamed, so a crash never leaves half a model."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if d.exists():
            old = d.with_name(f".{d.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(d, old)
            os.replace(tmp, d)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
