"""Modules a part adds beside a model's own weights (parallel adapters, LoRA experts), and
how they persist, shared by `kadapter` and `loramoe`.

Such a module cannot be merged into the model's weights, so it stays attached:
- it is a submodule of the Hugging Face model (`host.<name>`), so every other part and the
  training loop see its parameters (they train, `.to(device)` moves them, EWC estimates
  their Fisher, `copy.deepcopy` copies them with the model);
- it acts through forward hooks that are bound methods of the module itself (or partials
  of them), so a deep copy of the model (LwF's teacher) runs its own copy of the module;
- it is left out of `save_pretrained` (`_keys_to_ignore_on_save`): the saved directory is
  the plain base model, loadable by any tool, and the module's weights live in the part's
  state (`module_state`), which the runner checkpoints beside it. A model loaded from a
  checkpoint gets the module back from that state in `Part.restore` (or the next
  `prepare`). Such parts say so (`keeps_modules = True`), and `ckl update`, which ships a
  bare model directory, refuses them rather than write a model without its adapters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_HOOKED = "_ckl_hooked"  # names of attached modules whose hooks are registered on this host


def host_model(model) -> torch.nn.Module:
    """The Hugging Face model under wrappers (PEFT's `get_base_model`, DDP's `module`)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attached(model, name: str) -> torch.nn.Module | None:
    """The module attached to `model` under `name`, if any."""
    return host_model(model)._modules.get(name)


def attach(model, name: str, module: torch.nn.Module, register_hooks: Callable[[torch.nn.Module], None]) -> None:
    """Make `module` the host's submodule `name`, excluded from `save_pretrained`, and
    register its hooks once per host (`register_hooks(host)`).

    Call again after the module gained parameters: the excluded keys are recomputed.
    """
    host = host_model(model)
    if host._modules.get(name) is not module:
        host.add_module(name, module)
    keys = {f"{name}.{k}" for k in module.state_dict()}
    stale = {k for k in (getattr(host, "_keys_to_ignore_on_save", None) or ()) if not k.startswith(name + ".")}
    host._keys_to_ignore_on_save = stale | keys
    hooked = host.__dict__.setdefault(_HOOKED, set())
    if name not in hooked:
        register_hooks(host)
        hooked.add(name)


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors as detached CPU copies (for a part's `state_dict`)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `module_state` output back (strict: every key must match)."""
    module.load_state_dict(state, strict=True)


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(host_model(model).parameters())
    return param.device, param.dtype


class AttachedState:
    """The state of a part whose module is attached beside the model's weights (`module`):
    its weights as `w.<key>` tensors, or, between `load_state_dict` and the next attach, the
    loaded state (`saved`) as it came. Shared by `kadapter`, `loramoe` (and its variants)
    and `infuserki`."""

    module: torch.nn.Module | None = None
    saved: dict | None = None

    def module_weights(self) -> dict:
        if self.module is None:
            return dict(self.saved or {})
        return {f"w.{k}": t for k, t in module_state(self.module).items()}

    def state_dict(self) -> dict:
        return self.module_weights()

    def load_state_dict(self, state: dict) -> None:
        self.module = None
        self.saved = dict(state) if state else None
