"""The prompts an editor optimises over: context prefixes for every stream."""

from ckl.methods.edit._requests import edit_batches, prefix_pool
from ckl.data.facts import ChangeRecord, Fact, Relation

RELATIONS = {"r": Relation("r", ("{subject} plays", "The sport of {subject} is"), probe_template="The sport of {subject} is")}
BASE = [Fact("a", "Ann Lee", "r", "golf"), Fact("b", "Bo Vale", "r", "chess"), Fact("c", "Cy Moor", "r", "polo")]


def test_general_text_is_the_prefix_pool_when_there_is_some():
    assert prefix_pool(["It rained.", " ", "The dog slept."], BASE, RELATIONS) == ["It rained.", "The dog slept."]


def test_a_stream_without_general_text_gets_its_base_statements_as_prefixes():
    # CounterFact and zsRE imports have no general text: the contexts are what the base model read
    assert prefix_pool([], BASE, RELATIONS) == ["The sport of Ann Lee is golf.", "The sport of Bo Vale is chess.", "The sport of Cy Moor is polo."]


def test_no_prefix_states_the_edited_subjects_own_fact(tiny_stream, tiny_model):
    _, tokenizer = tiny_model
    fact = tiny_stream.base[0]
    record = ChangeRecord(1, "edit", Fact(fact.id, fact.subject, fact.relation, "x", 1), fact.object)
    pool = prefix_pool([], tiny_stream.base, tiny_stream.relations)
    assert sum(fact.subject in p for p in pool) >= 1  # the pool does hold the subject's own statements
    batches = edit_batches(tokenizer, [record], tiny_stream.relations, pool, len(pool), "{subject} is a", 0)
    texts = tokenizer.batch_decode(batches.rewrite.input_ids, skip_special_tokens=True)
    assert len(texts) > len(pool) - 10  # every other statement served as a context
    assert all(t.count(fact.subject) == 1 for t in texts)  # the subject only in the prompt itself
