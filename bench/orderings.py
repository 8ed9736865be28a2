"""Which orderings between methods change when knowledge rather than sentences is measured.

Not a test. For a finished run (any number of seeds), compares the ranking of methods by
one number (default: statement retention) with the ranking by another (extraction or
paraphrase retention, or the acquisition counterparts): Kendall's tau over the methods'
means (scipy), and every pair of methods ordered one way by the first number and the
other way by the second, each difference larger than its margin. The margin of a pair on
a number is the larger of `--min-gap` and the pair's spread over seeds,
sqrt(std_a^2 + std_b^2), so with several seeds only swaps larger than the seed-to-seed
noise are listed:

    .venv/bin/python bench/orderings.py runs/methods_k [--min-gap 0.05]
"""

from __future__ import annotations

import argparse
import itertools
import math

from scipy.stats import kendalltau

from ckl.results.store import Store
from ckl.results.summary import summarize

PAIRS = (("retention", "extraction_retention"), ("retention", "paraphrase_retention"),
         ("acquisition", "extraction_acquisition"), ("acquisition", "paraphrase_acquisition"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--min-gap", type=float, default=0.05)
    args = ap.parse_args()
    store = Store(f"{args.run}/results.sqlite")
    summary = summarize(store)  # as `ckl show` reads it
    for first, second in PAIRS:
        rows = {m: s for m, s in summary.items() if s.get(first) is not None and s.get(second) is not None}
        if len(rows) < 2:
            continue
        names = list(rows)
        tau = kendalltau([rows[m][first] for m in names], [rows[m][second] for m in names]).statistic
        swaps = []
        for a, b in itertools.combinations(names, 2):
            margins = [max(args.min_gap, math.hypot(rows[a][f"{k}_std"] or 0.0, rows[b][f"{k}_std"] or 0.0)) for k in (first, second)]
            d1, d2 = rows[a][first] - rows[b][first], rows[a][second] - rows[b][second]
            if (d1 > margins[0] and -d2 > margins[1]) or (-d1 > margins[0] and d2 > margins[1]):
                hi, lo = (a, b) if d1 > 0 else (b, a)
                swaps.append(f"{hi} > {lo} on {first} ({rows[hi][first]:.3f} vs {rows[lo][first]:.3f}) "
                             f"but < on {second} ({rows[hi][second]:.3f} vs {rows[lo][second]:.3f})")
        seeds = sorted({len(s["seeds"]) for s in rows.values()})
        print(f"{first} vs {second}: {len(names)} methods, seeds per method {seeds}, Kendall tau {tau:.2f}, "
              f"{len(swaps)} pair(s) reversed beyond the margin")
        for line in swaps:
            print("  " + line)


if __name__ == "__main__":
    main()
