"""Shared machinery of the weight editors (ROME, MEMIT) and the layer-locating tool.

- `layers`: where a model's transformer blocks and MLP output projections are (GPT-2
  `mlp.c_proj`, Llama/Mistral/Qwen `mlp.down_proj`, GPT-NeoX `mlp.dense_4h_to_h`, ...),
  derived from the model, never configured per model.
- `prompts`: tokenised prompt batches that know where each subject's last token is.
- `keys`: batched forward passes that capture module inputs/outputs at those tokens.
- `covariance`: the key second moment C = E[k k^T] of a layer on the base model's own
  training text, cached on disk next to the model.
- `targets`: the batched optimisation of the value a subject should map to (ROME's v*,
  MEMIT's z), one delta per edit, all edits in one batch.
- `locate`: causal tracing (which layer and token carry a fact).
"""
