"""The HTML report of an editing run (an imported CounterFact-style stream) plots the
sequential-editing curve: efficacy of every edit so far, locality and untouched
knowledge after each batch."""

from ckl.run.config import ExperimentConfig
from ckl.run.experiment import run_experiment
from ckl.data.formats.counterfact import counterfact_stream
from ckl.report.data import gather
from ckl.report.html import report_page
from tests.data.formats.test_editing_formats import cf, write


def test_the_report_of_an_editing_run_plots_the_sequential_curve(tmp_path):
    stream = counterfact_stream(write(tmp_path, [cf(i) for i in range(5)]), edits=4, batch=2, untouched=1)
    stream.save(tmp_path / "stream")
    config = ExperimentConfig.from_dict({
        "name": "edit", "stream": str(tmp_path / "stream"),
        "pretrain": {"n_layer": 2, "n_embd": 16, "n_head": 2, "max_epochs": 3, "eval_every": 3, "target_facts": "base"},
        "methods": [{"name": "grace", "grace": {"steps": 5}}], "eval": {"kinds": ["statement"], "max_candidates": 2},
        "allow_weak_base": True,  # a 3-epoch base: the report's layout is under test, not the numbers
    })
    run_experiment(config, tmp_path / "run", say=lambda m: None)
    data = gather([tmp_path / "run"])
    curve = data.methods[0].editing
    assert [c["edits"] for c in curve] == [2, 4]  # after each batch of 2 edits
    page = report_page(data)
    section = page[page.index("<h2>Sequential editing</h2>"):]
    assert "<svg" in section and "edits so far" in section and "untouched knowledge" in section
