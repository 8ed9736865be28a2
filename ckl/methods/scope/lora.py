"""LoRA: train low-rank adapters instead of the full weights (Hu et al. 2021), via PEFT.

A scope part: `prepare` wraps the model with PEFT adapters on every linear layer (the
lm head excluded), only the adapters train, and `finish` merges them into the weights so
the next stage, the store's checkpoints and `save_pretrained` see a plain model. A fresh
adapter is trained for each stage.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.train.loop import rng_for


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata={"help": "adapter rank"})
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError("r", f"r must be a positive integer, got {self.r!r}")
        check_number(self.alpha, "alpha", low=0, low_open=True)
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"dropout must be in [0, 1), got {self.dropout!r}")


def fan_in_fan_out(model) -> bool:
    """Whether the model stores its linear layers transposed (GPT-2's Conv1D), as PEFT asks."""
    return any(isinstance(m, Conv1D) for m in model.modules())


def wrap(model, peft_config, ctx: StageContext, tag: str, adapter_name: str = "default"):
    """`get_peft_model`, with the adapters' random initialisation drawn from (seed, tag,
    stage) inside a fork of the RNG, for every part that trains PEFT adapters."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning
        # about their code that every LoRA run printed; nothing the user can act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(rng_for(ctx.seed, tag, ctx.stage).randrange(2**31))
        return get_peft_model(model, peft_config, adapter_name=adapter_name)


class Lora(Part):
    name = "lora"

    def __init__(self, config: LoraConfig):
        self.config = config

    def prepare(self, model, ctx: StageContext):
        peft_config = PeftLoraConfig(
            fan_in_fan_out=fan_in_fan_out(model),
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=self.config.target_modules,
            task_type="CAUSAL_LM",
        )
        return wrap(model, peft_config, ctx, "lora")

    def finish(self, model, ctx: StageContext):
        return model.merge_and_unload()


register_part("lora", LoraConfig, Lora, "train low-rank adapters (PEFT) and merge them after the stage")
