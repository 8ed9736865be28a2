"""The copy mix: documents that show a fact in context and then ask it (or an unrelated
fact), deterministic, and never leaking a relation's candidates (an editing stream's new
targets) into pretraining."""

import random

from ckl.data.copy_mix import copy_documents
from ckl.data.formats.edits import EditCase, edit_stream


def test_copy_documents_are_deterministic_and_never_show_candidates():
    cases = [EditCase(f"c{i}", f"Person{i}", f"Person{i} speaks", None, f"new{i}", f"lang{i}", f"Other{i} speaks", f"lang{i}") for i in range(20)]
    stream = edit_stream(cases, "<test>", batch=10)
    docs = copy_documents(stream.base, stream.relations, random.Random(3), 200)
    assert docs == copy_documents(stream.base, stream.relations, random.Random(3), 200)
    assert len(docs) > 150 and all(d.startswith("New fact: ") for d in docs)
    assert not any(f"new{i}" in d for d in docs for i in range(20))  # no edit target leaks
    copies = [d for d in docs if d.split(". ", 1)[0].removeprefix("New fact: ") == d.split(". ", 1)[1].rstrip(".")]
    assert 0.3 < len(copies) / len(docs) < 0.7  # about half copy from the context, half do not
