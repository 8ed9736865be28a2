"""`ckl demo`: three seeds, and a fixed thread count whatever OMP_NUM_THREADS says."""

import io

import pytest
import torch

from rich.console import Console

from ckl.app import demo


class _Stop(Exception):
    pass


def test_the_demo_runs_three_seeds_with_the_thread_count_it_was_measured_with(monkeypatch, tmp_path):
    seen = {}

    def fake_run(config, out, **kwargs):
        seen.update(threads=torch.get_num_threads(), seeds=config.seeds, methods=[m.display for m in config.methods])
        raise _Stop

    import ckl.run.experiment

    monkeypatch.setattr(ckl.run.experiment, "run_experiment", fake_run)
    before = torch.get_num_threads()
    with pytest.raises(_Stop):
        demo.run_demo(tmp_path / "d", console=Console(file=io.StringIO()), threads=1)
    assert seen == {"threads": 1, "seeds": [0, 1, 2], "methods": ["naive", "replay", "lora", "lora+replay"]}
    assert torch.get_num_threads() == before  # restored for whatever runs next in the process
    assert demo.DEMO_THREADS == 2
