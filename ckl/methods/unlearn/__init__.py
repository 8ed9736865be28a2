"""Unlearning parts: objectives that make a model forget a stage's `forget` requests.

Every part here adds the `forget` change kind to a method. They share one machinery
(`ckl.methods.unlearn.part.Unlearning`): the forget facts are rendered with the training
templates the model learned them from, one document per row, and the part runs its
objective on the next forget batch at every step of the one training loop, in `batched`
(all of a stage's requests together) or `sequential` (one request after another) mode,
until a stopping rule says the forget set is forgotten. The files differ only in the
objective: gradient ascent (`ga`), GradDiff (`graddiff`), KL minimisation (`kl`), NPO
(`npo`), SimNPO (`simnpo`), the inverted hinge loss (`ihl`), "I don't know" targets
(`idk`) and relearning on alternative answers (`relearn`).

One method here does not train: `acu` keeps the model frozen and answers through a
ridge-regression head whose sums a forget request subtracts exactly (analytic unlearning).
"""
