"""fxbench.select: choices made on val from saved predictions, and the test seal.

* :mod:`~fxbench.select.seal` -- ``authorize_test``, ``log_test_access``, ``test_access_count``.
* :mod:`~fxbench.select.tune` -- threshold / presence choice on val (``tune_run``).
* :mod:`~fxbench.select.ensemble` -- mean of N runs' predictions (``run_ensemble``).
* :mod:`~fxbench.select.blend` -- two-model blend and classifier fusion (``run_blend``).
* :mod:`~fxbench.select.peers` -- other tools' masks (``score_mask_folder``), nnU-Net export.

The decision file itself is a shared record in :mod:`fxbench.artifacts.decision`.
Nothing here imports torch or a model: selection reads artifacts and never re-runs a network.
Submodules are imported on use, so ``import fxbench.select`` stays cheap.
"""
