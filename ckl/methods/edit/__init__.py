"""Knowledge editors, one file each, and the editing core they share.

Editors (each registers itself): `rome`, `memit` (weight updates), `grace`, `kv_memory`
(memories hooked beside one MLP), `ike` (in-context demonstrations, no weight change).

The core (underscore modules, used inside this family and by `locate`):
- `ckl.model.layers`: where a model's blocks, MLPs and MLP output projections are (GPT-2 `mlp.c_proj`,
  Llama/Mistral/Qwen `mlp.down_proj`, GPT-NeoX `mlp.dense_4h_to_h`, ...), derived from the
  model, never configured per model.
- `_prompts`: tokenised prompt batches that know where each subject's last token is.
- `_keys`: batched forward passes that capture module inputs/outputs at those tokens.
- `_covariance`: the key second moment C = E[k k^T] of a layer on the base model's own
  training text, cached on disk next to the model.
- `_values`: the one value optimiser: the vector an edit writes into a module's output
  (ROME's v*, MEMIT's z, GRACE's values, kv_memory's residuals), all edits in one batch.
- `_requests`: edit requests and the context prefixes of a stream.
- `_memory`: the hooked-memory editors' shared frame (GRACE, kv_memory).
- `locate`: causal tracing (which layer and token carry a fact; `ckl locate`).
"""
