"""CorDA: LoRA initialised from a decomposition of the weights oriented by the covariance of
the knowledge to keep (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation
of Large Language Models for Task-Aware Parameter-Efficient Fine-tuning"), via PEFT.

A scope part with the `lora` part's fields. Before each stage every target layer's input
covariance C is measured on the text the base model was trained on (the stream's base
facts rendered as documents and its general text, the editors' `covariance_texts`), the
product W C is decomposed by SVD, and in the paper's knowledge-preserved mode (`kpm`, the
default) the adapter starts as the r components with the *smallest* singular values,

    W C = U S V^T,   B A = U[:, -r:] S[-r:] V[:, -r:]^T C^-1,   W_frozen = W - B A

so the frozen residual keeps the directions the old knowledge's activations use most and
training moves only the ones they barely excite. The model is unchanged at the start
(W_frozen + B A = W, checked by the tests). `ipm` takes the largest components instead
(the paper's instruction-previewed mode: faster learning, no preservation). LoRA merges
after the stage, as `lora` does.

PEFT does the decomposition (`peft.tuners.lora.corda.preprocess_corda` and the layers'
`corda` initialisation); ckl supplies the calibration pass. PEFT's covariance hook reads
one sequence per forward, so the calibration text is packed into `block_size`-token
blocks and run one block at a time (no padding enters the covariance).

Deviations: the paper decomposes once, before a single fine-tuning; here every stage
decomposes the current weights again, always oriented by the base model's own training
text (K0; the knowledge a stream's later stages taught is not added to the calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora.config import CordaConfig as PeftCordaConfig
from peft.tuners.lora.corda import preprocess_corda
from transformers.pytorch_utils import Conv1D

from ckl.core.checks import ConfigError, check_count
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.edit._covariance import covariance_texts
from ckl.methods.scope.lora import LoraConfig, fan_in_fan_out, wrap
from ckl.train.batching import pack


@dataclass
class CordaConfig:
    r: int = field(default=16, metadata={"help": "adapter rank (the number of decomposed components the adapter takes)"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator; CorDA's initialisation folds the singular values into A and B, so the product is exact whatever alpha / r is"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})
    mode: str = field(default="kpm", metadata={"help": "kpm: the adapter takes the components the kept knowledge uses least (preserves it); ipm: the largest (the paper's instruction-previewed mode)"})
    samples: int = field(default=256, metadata={"help": "most calibration documents (base-fact documents and general text)"})
    block_size: int = field(default=256, metadata={"help": "tokens per calibration block (one block per forward pass)"})

    def __post_init__(self) -> None:
        LoraConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules)  # same checks, same messages
        if self.mode not in ("kpm", "ipm"):
            raise ConfigError("mode", f"mode must be 'kpm' or 'ipm', got {self.mode!r}")
        check_count(self.samples, "samples")
        check_count(self.block_size, "block_size")


class Corda(Part):
    name = "corda"

    def __init__(self, config: CordaConfig):
        self.config = config

    def peft_config(self, model) -> PeftLoraConfig:
        targets = self.config.target_modules
        if targets == "all-linear":
            # PEFT's CorDA preprocessing matches names literally and does not expand
            # "all-linear" (get_peft_model does): name every linear layer but the head
            head = model.get_output_embeddings()
            targets = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
        return PeftLoraConfig(
            fan_in_fan_out=fan_in_fan_out(model),
            r=self.config.r,
            lora_alpha=self.config.alpha,
            target_modules=targets,
            init_lora_weights="corda",
            corda_config=PeftCordaConfig(corda_method=self.config.mode),
            task_type="CAUSAL_LM",
        )

    def prepare(self, model, ctx: StageContext):
        texts = covariance_texts(ctx.base, ctx.relations, ctx.general_text, self.config.samples, ctx.seed, ctx.qa_subjects)
        if not texts:
            raise ValueError("corda: the stream has no base facts or general text to orient the decomposition by")
        input_ids, mask, _ = pack(ctx.tokenizer, texts, self.config.block_size)
        device = next(model.parameters()).device

        @torch.no_grad()
        def run_model() -> None:
            for ids, m in zip(input_ids, mask):
                n = int(m.sum())
                model(input_ids=ids[None, :n].to(device))

        config = self.peft_config(model)
        training = model.training
        preprocess_corda(model, config, run_model=run_model)
        peft_model = wrap(model, config, ctx, "corda")  # CorDA's initialisation is the SVD: no random draw
        peft_model.train(training)
        return peft_model

    def finish(self, model, ctx: StageContext):
        return model.merge_and_unload()


register_part("corda", CordaConfig, Corda, "LoRA initialised from the covariance-oriented SVD of the weights (CorDA, knowledge-preserved mode), trained and merged after the stage")
