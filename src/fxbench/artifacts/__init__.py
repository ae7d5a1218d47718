"""fxbench.artifacts: the shared records every stage reads or writes; no stage owns them.

* :mod:`~fxbench.artifacts.predictions` -- the predictions artifact (``RUN/predictions/<split>.npz``).
* :mod:`~fxbench.artifacts.decision` -- the decision file (``RUN/decision.json``) and tune record.
* :mod:`~fxbench.artifacts.run` -- the run folder: lock, ``run.json``, ``env.json``, status.
* :mod:`~fxbench.artifacts.checkpoint` -- checkpoints (``RUN/checkpoints/{best,last}.pt``):
  atomic save, safe load, weights into a model; used by train and predict alike.

These modules import only :mod:`fxbench.errors`, :mod:`fxbench.io` and the standard library
(plus numpy and torch for checkpoints), never a stage package, so every stage may import them without a cycle.
"""
