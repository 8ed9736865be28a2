"""GradDiff keeps more of the retained knowledge than gradient ascent for the same forget
efficacy: both run until the forget facts' exact match is 0 (the default stopping rule)."""


def test_graddiff_keeps_retain_accuracy_higher_than_ga_at_equal_forget_efficacy(unlearn, forget_only, retained, exact_match):
    options = {"train": {"epochs": 60, "lr": 3e-4}}
    forget = list(forget_only.forget)
    results = {}
    for name in ("ga", "graddiff"):
        model, tokenizer, stats, _, _ = unlearn(name, options, forget_only)
        results[name] = {
            "forget": exact_match(model, tokenizer, forget),
            "paraphrase": exact_match(model, tokenizer, forget, ("paraphrase",)),
            "retain": exact_match(model, tokenizer, retained),
            "steps": stats.steps,
        }
    ga, gd = results["ga"], results["graddiff"]
    assert ga["forget"] == gd["forget"] == 0.0  # equal forget efficacy on the trained prompts
    assert ga["paraphrase"] == gd["paraphrase"] == 0.0  # and on held-out paraphrases
    assert gd["retain"] >= ga["retain"] + 0.05, results  # measured: 0.525 vs 0.408
