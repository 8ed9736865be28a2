"""Which methods beat which baselines, family by family, beyond the seeds' spread.

Not a test. For a finished run (any number of seeds), compares every method that is not a
baseline with every baseline on two numbers at once (default: statement retention and
acquisition, the two a forgetting method trades). On each number the difference counts
only when it is larger than its margin: the larger of `--min-gap` and the pair's spread
over seeds, sqrt(std_a^2 + std_b^2). A method

- **beats** a baseline when it is higher beyond the margin on one number and not lower
  beyond the margin on the other;
- **loses** to it in the mirror case;
- **trades** with it when it is higher on one and lower on the other, both beyond the
  margin;
- **ties** with it otherwise.

A method's family is the folder of its module (`ckl/methods/<family>/`); a composition
(`replay+ser`) takes the family of its last part that is not a baseline.

    .venv/bin/python bench/family_verdicts.py runs/methods \
        --baselines naive,replay,lora,ewc,l2,lwf,agem [--numbers retention,acquisition]
"""

from __future__ import annotations

import argparse
import math

from ckl.methods.base import load_builtin
from ckl.results.store import Store
from ckl.results.summary import summarize


def family(label: str, baselines: set[str], registry: dict, names: dict[str, str]) -> str:
    """The folder of the method behind `label` (its last non-baseline part)."""
    parts = [p for p in names.get(label, label).split("+") if p not in baselines] or names.get(label, label).split("+")
    module = registry[parts[-1]].factory.__module__  # ckl.methods.<family>.<file> or ckl.methods.<file>
    pieces = module.split(".")
    return pieces[2] if len(pieces) > 3 else "top level"


def verdict(a: dict, b: dict, keys: tuple[str, str], min_gap: float) -> str:
    """beats / loses / trades / ties, for method a against baseline b."""
    signs = []
    for key in keys:
        margin = max(min_gap, math.hypot(a.get(f"{key}_std") or 0.0, b.get(f"{key}_std") or 0.0))
        d = a[key] - b[key]
        signs.append(1 if d > margin else -1 if d < -margin else 0)
    if 1 in signs and -1 in signs:
        return "trades"
    return "beats" if 1 in signs else "loses" if -1 in signs else "ties"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--baselines", default="naive,replay,lora,ewc,l2,lwf,agem")
    ap.add_argument("--numbers", default="retention,acquisition", help="two keys of `ckl show --json`'s summary")
    ap.add_argument("--min-gap", type=float, default=0.02)
    args = ap.parse_args()
    keys = tuple(args.numbers.split(","))
    if len(keys) != 2:
        ap.error("--numbers takes exactly two keys")
    baselines = [b for b in args.baselines.split(",") if b]
    store = Store(f"{args.run}/results.sqlite")
    summary = {m: s for m, s in summarize(store).items() if s["seeds"] and all(s.get(k) is not None for k in keys)}
    # label -> method name ("replay-influence" is `replay` with a policy)
    names = {label: spec.get("name", label) for label, spec in (store.get_meta("methods") or {}).items()}
    missing = [b for b in baselines if b not in summary]
    if missing:
        ap.error(f"baselines not in the run (or incomplete): {', '.join(missing)}")
    registry = load_builtin()
    by_family: dict[str, list[str]] = {}
    for label in summary:
        if label not in baselines:
            by_family.setdefault(family(label, set(baselines), registry, names), []).append(label)
    print(f"{keys[0]} / {keys[1]}, margin max({args.min_gap}, seeds' spread); baselines: "
          + ", ".join(f"{b} {summary[b][keys[0]]:.3f}/{summary[b][keys[1]]:.3f}" for b in baselines))
    for fam in sorted(by_family):
        print(f"\n{fam}:")
        for label in by_family[fam]:
            s = summary[label]
            groups: dict[str, list[str]] = {}
            for b in baselines:
                groups.setdefault(verdict(s, summary[b], keys, args.min_gap), []).append(b)
            said = "; ".join(f"{v} {', '.join(groups[v])}" for v in ("beats", "trades", "ties", "loses") if v in groups)
            print(f"  {label} ({len(s['seeds'])} seeds) {s[keys[0]]:.3f}/{s[keys[1]]:.3f}: {said}")


if __name__ == "__main__":
    main()
