"""Parts that choose which weights train (LoRA, freezing, expansion, adapters)."""
