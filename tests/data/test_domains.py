"""The synthetic domain corpora of continual pre-training streams (ckl.data.domains)."""

import random
import re

from ckl.data import domains, world

FUNCTION_WORDS = {"the", "a", "and", "in", "for", "by", "after", "before", "every", "was", "is", "when", "must",
                  "stay", "that", "knows", "kept", "without", "asked", "help", "an", "of"}


def _words(texts):
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z']+", t)}


def _content(domain):
    return _words(domain.roles + domain.nouns + domain.adjectives + domain.verbs + domain.places + domain.events) - FUNCTION_WORDS


def test_each_domain_has_words_no_other_domain_the_general_text_or_the_world_uses():
    general = _words(world.general_sentences(random.Random(0), 2000))
    names = {p.lower() for p in world.FIRST_HEADS + world.FIRST_TAILS + world.LAST_HEADS + world.LAST_TAILS}
    objects = _words(world.CITIES + world.UNIVERSITIES + world.EMPLOYERS + world.OCCUPATIONS + world.HOBBIES)
    templates = _words(t for spec in world.RELATION_SPECS for group in spec[2:5] for t in group)
    for i, d in enumerate(domains.DOMAINS):
        words = _content(d)
        for other in domains.DOMAINS[i + 1:]:
            assert not words & _content(other), (d.name, other.name, words & _content(other))
        assert not words & general, (d.name, words & general)
        assert not words & objects and not words & templates, d.name
        # no content word is a name syllable: a name's token must not carry a domain's meaning
        assert not {w for w in words if any(w == n for n in names)}, d.name


def test_documents_are_distinct_deterministic_and_drawn_from_their_stages_domain():
    docs = domains.domain_documents(random.Random(3), 2, 60)
    assert len(set(docs)) == 60 and docs == domains.domain_documents(random.Random(3), 2, 60)
    cookery = _content(domains.DOMAINS[1])
    for doc in docs:
        assert 3 <= doc.count(".") <= 6
        used = _words([doc]) - FUNCTION_WORDS
        assert used <= cookery | FUNCTION_WORDS | {"maid"}, used - cookery
    assert domains.domain_of(5) is domains.domain_of(1) and domains.domain_of(4).name == "medicine"
