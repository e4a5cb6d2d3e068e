"""The body of each pipeline stage, one module per stage: `run(cfg, keys) -> result`.

A stage's code dependencies are the import closure of its module here (flows/codedeps.py), so each module
imports only what its stage uses. `keys` holds the current record key of this stage and of every stage before
it (flows/records.py): the view cache and the pretraining checkpoint are keyed by them.
"""
