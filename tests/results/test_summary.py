"""Per-method summaries computed from a hand-filled store."""

import pytest

from ckl.data.facts import Probe
from ckl.results.store import Outcome, StageInfo, Store
from ckl.results.summary import summarize, summarize_seed

PROBES = [
    Probe("inv/a", "A lives in", "X", ("X", "Y"), "statement", "invariant", "a", 0, "base"),
    Probe("inv/b", "B lives in", "X", ("X", "Y"), "statement", "invariant", "b", 0, "base"),
    Probe("s1/c", "C lives in", "X", ("X", "Y"), "statement", "stage1", "c", 1, "learn"),
    Probe("s1/d", "D lives in", "Y", ("X", "Y"), "statement", "stage1", "d", 1, "update"),
    Probe("st1/d", "D lives in", "X", ("X", "Y"), "statement", "stale1", "d", 1, "update"),
    Probe("s2/e", "E lives in", "X", ("X", "Y"), "statement", "stage2", "e", 2, "learn"),
]
# em per row:             inv/a inv/b s1/c s1/d st1/d s2/e
EM = {0: (1, 1, 0, 0, 1, 0), 1: (1, 0, 1, 1, 0, 0), 2: (0, 0, 1, 0, 1, 1)}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "results.sqlite")
    s.set_meta("T", 2)
    s.set_meta("metric", "em")
    s.add_probes(PROBES)
    for row, ems in EM.items():
        outcomes = [Outcome(p.id, bool(e), bool(e), -1.0, p.answer) for p, e in zip(PROBES, ems)]
        s.record_row("m", 0, row, outcomes, StageInfo(seconds=row * 1.5, trainable_params=10, tokens_seen=100 * row, perplexity=10.0 + row))
    yield s
    s.close()


def test_summary_numbers_follow_their_definitions(store):
    s = summarize_seed(store, "m", 0)
    # matrix: invariant 1.0 / 0.5 / 0.0 ; stage1 (c, d) 0 / 1 / 0.5 ; stage2 (e) 0 / 0 / 1
    assert s["matrix"] == [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]]
    assert s["retention"] == 0.0
    assert s["acquisition"] == 1.0  # learned c and e both right after stage 2
    assert s["update"] == 0.0  # d's new object wrong at the end
    assert s["stale"] == 1.0  # d's old object right at the end
    # FUAR: stage1 IL 1 -> 0.5 (0.5 lost), UL 0 -> 1, NL 0 -> 1 (2 gained);
    #       stage2 IL 0.5 -> 0 (0.5 lost), NL 0 -> 1 (1 gained): (0.5 + 0.5) / (2 + 1)
    assert s["fuar"] == pytest.approx(1 / 3)
    assert s["bwt"] == pytest.approx(0.5 - 1.0)
    assert s["seconds"] == pytest.approx(4.5) and s["tokens_seen"] == 300
    assert (s["perplexity_before"], s["perplexity_after"], s["perplexity_delta"]) == (10.0, 12.0, 2.0)


def test_incomplete_runs_are_reported_not_averaged(store):
    store.record_row("m", 1, 0, [], StageInfo())
    summary = summarize(store)["m"]
    assert summary["seeds"] == [0] and summary["incomplete_seeds"] == [1]
    assert summary["retention_std"] == 0.0


def test_methods_are_listed_in_the_experiment_order_even_when_one_ran_again_later(store):
    outcomes = [Outcome(p.id, True, True, -1.0, p.answer) for p in PROBES]
    for row in (0, 1, 2):
        store.record_row("first", 0, row, outcomes, StageInfo())  # recorded after "m" (a re-run, say)
    assert list(summarize(store)) == ["m", "first"]  # recording order without an experiment order
    store.set_meta("method_order", ["first", "m"])
    assert list(summarize(store)) == ["first", "m"]


def test_superficial_forgetting_is_lost_form_with_the_content_still_ranked_first(tmp_path):
    probes = [Probe(f"inv/{k}", f"{k} lives in", "X", ("X", "Y"), "statement", "invariant", k, 0, "base") for k in "abcd"]
    with Store(tmp_path / "r.sqlite") as s:
        s.set_meta("T", 1)
        s.add_probes(probes)
        # row 0: all stated; row 1: a kept, b and c no longer stated but X still ranks first, d lost for good
        rows = {0: [(1, 1)] * 4, 1: [(1, 1), (0, 1), (0, 1), (0, 0)]}
        for row, marks in rows.items():
            s.record_row("m", 0, row, [Outcome(p.id, bool(e), bool(r), -1.0, "X") for p, (e, r) in zip(probes, marks)], StageInfo())
        assert summarize_seed(s, "m", 0)["superficial"] == pytest.approx(2 / 3)  # b, c of the forgotten b, c, d
        assert summarize_seed(s, "m", 0, metric="rank")["superficial"] is None


def test_as_of_probes_give_the_rewind_numbers_and_leave_the_plain_stale_number_alone(tmp_path):
    """On a dated world the stale cohort's as_of probe has the old object as its target: a
    model that still answers it as of its year rewinds (`rewind`, higher is better), while
    the same old object asked plainly stays `stale` (lower is better)."""
    from ckl.results import numbers

    probes = PROBES + [
        Probe("inv/a/as_of", "As of 2020, A lives in", "X", ("X", "Y"), "as_of", "invariant", "a", 0, "base"),
        Probe("s1/d/as_of", "As of 2021, D lives in", "Y", ("X", "Y"), "as_of", "stage1", "d", 1, "update"),
        Probe("st1/d/as_of", "As of 2020, D lives in", "X", ("X", "Y"), "as_of", "stale1", "d", 1, "update"),
    ]
    # row 0: the base model knows A's and D's 2020 objects; row 2: D's update learned
    # (plainly and as of 2021), its old object still given as of 2020 but no longer plainly
    em = {0: EM[0] + (1, 0, 1), 1: EM[1] + (1, 1, 1), 2: (0, 0, 1, 1, 0, 1) + (1, 1, 1)}
    with Store(tmp_path / "r.sqlite") as s:
        s.set_meta("T", 2)
        s.add_probes(probes)
        for row, marks in em.items():
            s.record_row("m", 0, row, [Outcome(p.id, bool(e), bool(e), -1.0, p.answer) for p, e in zip(probes, marks)], StageInfo())
        out = summarize_seed(s, "m", 0)
    assert (out["update"], out["stale"]) == (1.0, 0.0)  # the plain prompts: updated, not stale
    assert (out["as_of_invariant"], out["as_of_update"], out["rewind_before"], out["rewind"]) == (1.0, 1.0, 1.0, 1.0)
    assert out["rewind_updated"] == 1.0  # d: the new object plainly and the old one as of 2020
    assert out["matrix"][2][0] == 0.0  # a and b no longer stated: inv/a's as_of probe never enters the statement matrix
    shown = {n.key for n in numbers.shown(numbers.columns("learning"), [out])}
    assert {"as_of_invariant", "as_of_update", "rewind", "rewind_updated"} <= shown
    undated = {n.key for n in numbers.shown(numbers.columns("learning"), [{"rewind": None, "as_of_update": None, "as_of_invariant": None}])}
    assert not {"as_of_invariant", "as_of_update", "rewind"} & undated  # columns only where measured


def test_an_update_left_unapplied_is_no_rewind(tmp_path):
    """A method that never applied the update still gives the old object as of 2020
    (`rewind`), but not together with the new one (`rewind_updated`)."""
    probes = [
        Probe("inv/a", "A lives in", "X", ("X", "Y"), "statement", "invariant", "a", 0, "base"),
        Probe("s1/d", "D lives in", "Y", ("X", "Y"), "statement", "stage1", "d", 1, "update"),
        Probe("st1/d", "D lives in", "X", ("X", "Y"), "statement", "stale1", "d", 1, "update"),
        Probe("st1/d/as_of", "As of 2020, D lives in", "X", ("X", "Y"), "as_of", "stale1", "d", 1, "update"),
    ]
    with Store(tmp_path / "r.sqlite") as s:
        s.set_meta("T", 1)
        s.add_probes(probes)
        for row in (0, 1):  # never updated: the old object everywhere
            s.record_row("m", 0, row, [Outcome(p.id, e, e, -1.0, p.answer) for p, e in zip(probes, (True, False, True, True))], StageInfo())
        out = summarize_seed(s, "m", 0)
    assert (out["update"], out["stale"], out["rewind"], out["rewind_updated"]) == (0.0, 1.0, 1.0, 0.0)
