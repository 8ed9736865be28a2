"""Prompt batches point at the subject's tokens whatever the template and prefix."""

import pytest

from ckl.methods.edit._prompts import Row, encode


def test_subject_positions_for_last_and_first_token(tiny_model):
    _, tokenizer = tiny_model
    rows = [
        Row("", "{subject} was born in", "Quenda Kelhurst", "Lake Varona", 0),
        Row("It was sunny at noon.", "The birthplace of {subject} is", "Quenda Kelhurst", "Lake Varona", 0),
    ]
    for token, word in (("last", "Kelhurst"), ("first", "Quenda")):
        batch = encode(tokenizer, rows, token)
        for i in range(len(rows)):
            ids = batch.input_ids[i].tolist()
            assert tokenizer.convert_ids_to_tokens(ids[int(batch.subject_pos[i])]) == word
            answer = ids[int(batch.last_pos[i]) + 1 : int(batch.last_pos[i]) + 3]
            assert answer == batch.target_ids[i].tolist()[:2]
    with pytest.raises(ValueError, match="subject_token"):
        encode(tokenizer, rows, "middle")
