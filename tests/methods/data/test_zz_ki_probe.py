from tests.methods.data.test_knowledge_instruct import _run
from ckl.data.stream import make_probes
from ckl.model.scoring import score_probes


def test_print(tiny_stream, tiny_model_dir, accelerator):
    change = tiny_stream.stages[0]
    held_out = [f for f in change.learn if f.subject not in tiny_stream.qa_subjects]
    probes = make_probes(held_out, tiny_stream.relations, "x", 1, "new", ("question",), 10)
    for epochs in (10, 20):
        for name in ("naive", "knowledge_instruct"):
            model, tokenizer, _ = _run(name, {}, tiny_stream, tiny_model_dir, accelerator, epochs=epochs)
            s = score_probes(model, tokenizer, probes)
            print("RESULT", epochs, name, len(probes), s.em.mean(), s.rank_ok.mean(), s.logprob.mean())
