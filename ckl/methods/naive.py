"""Naive: full fine-tuning of every parameter on the stage's new and changed facts.

The reference point for forgetting (the "vanilla" baseline of Jang et al. 2022, "Towards
Continual Knowledge Learning of Language Models"). It is the empty composition: the
training loop with no scope, data or objective parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckl.methods.base import register_part


@dataclass
class NaiveConfig:
    """Naive has no options of its own; training settings live under `train`."""


def _naive(config: NaiveConfig):
    return None  # no part: the bare loop is the method


register_part("naive", NaiveConfig, _naive, "full fine-tuning on the change (the forgetting baseline)")
