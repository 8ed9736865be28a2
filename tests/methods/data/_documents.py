"""A spy on the training loop that records each epoch's documents (what a data part renders)."""

import ckl.methods.base as base_module


def record_documents(monkeypatch) -> dict[int, list[str]]:
    """Patch the loop so that every epoch's documents are recorded (epoch -> documents)
    before training runs as usual; returns the dict being filled."""
    seen: dict[int, list[str]] = {}
    real = base_module.train

    def spy(model, tokenizer, documents, config, *args, **kwargs):
        for epoch in range(config.epochs):
            seen[epoch] = list(documents(epoch))
        return real(model, tokenizer, documents, config, *args, **kwargs)

    monkeypatch.setattr(base_module, "train", spy)
    return seen
