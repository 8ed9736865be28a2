"""Progress outside a terminal (a log file, CI): plain lines as work goes, each with
elapsed time and ETA, instead of rich's bars printed all at once at the end."""

import io

from rich.console import Console

from ckl.core.progress import RunProgress


def test_outside_a_terminal_each_stage_and_the_end_print_a_line_with_an_eta():
    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=False, width=200), every_seconds=0) as bar:
        bar.start("naive (seed 0)", 3)
        bar.train_step(5, 1.25)
        bar.advance()
        bar.advance()
        bar.advance()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("naive (seed 0): 0/3 stages, elapsed 0:00:00, ETA")
    assert "step 5  loss 1.250" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("naive (seed 0): 3/3 stages") and lines[-1].endswith("done")
    assert "ETA ?" not in lines[2]  # after a stage the ETA is known (elapsed per stage x stages left)
    assert "━" not in out.getvalue()  # no bar drawn into a log


def test_pretraining_that_stops_early_ends_its_bar_complete_and_lines_are_throttled():
    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=False, width=200), every_seconds=3600) as bar:
        bar.start("pretraining (epochs)", 250)
        for epoch in range(1, 80):
            bar.epoch(epoch, epoch * 10, 2.0)  # within the hour: no line per epoch
        bar.finish(80, "target reached")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the start and the end
    assert lines[-1].startswith("pretraining (epochs): 80/80 epochs, target reached") and lines[-1].endswith("done")


def test_in_a_terminal_the_bar_shows_an_eta_column():
    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=True, width=200)) as bar:
        bar.start("naive (seed 0)", 2)
        bar.advance()
    assert "ETA" in out.getvalue() and "1/2" in out.getvalue()
