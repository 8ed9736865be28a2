"""Synthetic domain corpora: the unlabeled text of continual pre-training (CPT) stages.

Continual pre-training trains a model on a stream of domain corpora rather than of facts
(Gururangan et al. 2020, "Don't Stop Pretraining"; Ke et al. 2023, "Continual
Pre-training of Language Models"; Jin et al. 2022, "Lifelong Pretraining"). Each domain
here is a small grammar over its own vocabulary (seafaring, cookery, astronomy, medicine):
a stage's documents teach the model that domain's words and how they combine, its
held-out documents measure how much of the domain the model has learned (perplexity), and
training on a later domain shows how much of the earlier ones, and of the base knowledge,
it forgets. The vocabularies (the content words; the sentence frames' function words are
common to all) share no word with each other, with the general text's grammar or with the
world's objects and names, so a domain's perplexity moves with what was learned of that
domain (tests/data/test_domains.py).

`domain_documents(rng, stage, n)` gives `n` distinct documents of stage `stage`'s domain
(stage j uses DOMAINS[(j - 1) % len(DOMAINS)]: a fifth stage returns to the first domain,
with new documents).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    name: str
    roles: tuple[str, ...]
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]  # past tense, transitive
    places: tuple[str, ...]
    events: tuple[str, ...]


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "seafaring",
        ("sailor", "captain", "navigator", "deckhand", "helmsman", "boatswain"),
        ("mast", "rudder", "anchor", "hull", "mainsail", "compass", "keel", "hawser", "lantern", "bowsprit"),
        ("salty", "tarred", "sturdy", "leaking", "trim", "weathered"),
        ("hoisted", "lashed", "mended", "steered", "coiled", "lowered"),
        ("quarterdeck", "forecastle", "bilge", "galley", "hold"),
        ("tide", "squall", "voyage", "gale", "landfall"),
    ),
    Domain(
        "cookery",
        ("cook", "scullion", "butler", "steward", "confectioner", "kitchen maid"),
        ("saucepan", "ladle", "skillet", "whisk", "dough", "broth", "custard", "colander", "griddle", "marinade"),
        ("simmering", "crusty", "buttery", "tangy", "sieved", "peppery"),
        ("stirred", "kneaded", "braised", "seasoned", "ladled", "whisked"),
        ("pantry", "scullery", "larder", "bakehouse", "cellar"),
        ("supper", "banquet", "feast", "tasting", "breakfast"),
    ),
    Domain(
        "astronomy",
        ("astronomer", "observer", "cartographer", "apprentice", "curator", "calculator"),
        ("telescope", "lens", "comet", "nebula", "meteor", "orbit", "sextant", "quasar", "planetoid", "star chart"),
        ("faint", "distant", "luminous", "elliptical", "dim", "radiant"),
        ("observed", "charted", "measured", "tracked", "catalogued", "aligned"),
        ("observatory", "dome", "plateau", "tower", "summit"),
        ("eclipse", "equinox", "solstice", "transit", "conjunction"),
    ),
    Domain(
        "medicine",
        ("physician", "apothecary", "surgeon", "midwife", "orderly", "herbalist"),
        ("tincture", "poultice", "splint", "bandage", "salve", "lancet", "remedy", "tonic", "scalpel", "compress"),
        ("bitter", "sterile", "soothing", "swollen", "feverish", "herbal"),
        ("prescribed", "bandaged", "sterilised", "examined", "dressed", "brewed"),
        ("infirmary", "dispensary", "ward", "clinic", "sickroom"),
        ("epidemic", "recovery", "operation", "consultation", "quarantine"),
    ),
)


def domain_of(stage: int) -> Domain:
    """The domain of stage `stage` (1-based); domains repeat after the last."""
    return DOMAINS[(stage - 1) % len(DOMAINS)]


def _sentence(rng: random.Random, d: Domain) -> str:
    role, role2 = rng.sample(d.roles, 2)
    noun, noun2 = rng.sample(d.nouns, 2)
    adj, adj2 = rng.sample(d.adjectives, 2)
    verb, verb2 = rng.sample(d.verbs, 2)
    place, event = rng.choice(d.places), rng.choice(d.events)
    pattern = rng.randrange(6)
    if pattern == 0:
        return f"The {role} {verb} the {adj} {noun} in the {place}."
    if pattern == 1:
        return f"Before the {event}, every {role} {verb} a {noun} and {verb2} the {noun2}."
    if pattern == 2:
        return f"A {role} knows that the {noun} must stay {adj} when the {noun2} is {adj2}."
    if pattern == 3:
        return f"In the {place} the {role2} kept a {adj} {noun} for the {event}."
    if pattern == 4:
        return f"The {adj} {noun} was {verb} by the {role} after the {event}."
    return f"Without a {noun2}, the {role} {verb} the {noun} and asked the {role2} for help."


def domain_documents(rng: random.Random, stage: int, n: int, sentences: tuple[int, int] = (3, 6)) -> list[str]:
    """`n` distinct documents of stage `stage`'s domain, each of `sentences` (inclusive
    range) sentences, in generation order."""
    domain = domain_of(stage)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        doc = " ".join(_sentence(rng, domain) for _ in range(rng.randint(*sentences)))
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out
