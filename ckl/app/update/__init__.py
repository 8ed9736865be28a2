"""`ckl update`: a practitioner's one command to update a model and gate its release.

    gates.py   "retention>=0.98": parsing and checking
    inputs.py  the fact files, read and cross-checked
    run.py     the workflow (load, keep-set, evaluate, apply, evaluate, gate, write)
    page.py    the HTML report
"""

from ckl.app.update.run import UpdateRequest, UpdateResult, run_update

__all__ = ["UpdateRequest", "UpdateResult", "run_update"]
