"""The operating-point rules every stage shares: presence-source resolution, composite
selection metrics and their NaN policy.

Defined once here and used by train's model selection, ``tune``, ``ensemble``, ``blend``,
``eval``, ``predict`` and ``report`` (they used to resolve ``auto`` in three places, with
different answers for the same artifact).

* **Presence source** ``auto`` is the first of :data:`PRESENCE_ORDER` the predictions hold
  (``head``, then ``blend``, ``max``, ``topk_mean``, ``mean``, ``pred_area``), else the
  alphabetically first source.
  A named source must be present: asking for ``head`` of a model without a head is an error,
  never a silent fall-back to ``max``.
* **Composite metrics** (:data:`COMPOSITE_METRICS`) are sums of plain metrics, e.g.
  ``auc_plus_dice_pos = roc_auc_presence + dice_pos``.
* **NaN policy** (one for all): a composite with an undefined (NaN or missing) part is NaN; in
  a selection NaN ranks below every number (:func:`selection_key`), so it never wins and a
  grid or an epoch with a defined score always beats it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fxbench.errors import ConfigError, DataError

#: Presence sources in the order ``auto`` (and tune, on exact ties) prefers them. ``mean`` and
#: ``pred_area`` (:mod:`fxbench.evaluate.presence`) come last, so ``auto`` keeps its meaning.
PRESENCE_ORDER = ("head", "blend", "max", "topk_mean", "mean", "pred_area")
#: Sources computed from the map at a decision's pixel threshold, never stored in artifacts.
DERIVED_PRESENCE = ("pred_area",)

#: name -> the plain metrics it sums.
COMPOSITE_METRICS: dict[str, tuple[str, ...]] = {
    "auc_plus_dice_pos": ("roc_auc_presence", "dice_pos"),
}


def presence_order(sources: Sequence[str]) -> list[str]:
    """``sources`` in preference order: :data:`PRESENCE_ORDER` first, then alphabetical."""
    known = [s for s in PRESENCE_ORDER if s in sources]
    return known + sorted(s for s in sources if s not in known)


def resolve_presence_source(available: Any, requested: str | None) -> str:
    """The presence score key a decision means for these predictions.

    Args:
        available: a :class:`~fxbench.artifacts.predictions.Predictions`, a mapping of source ->
            scores, or a sequence of source names.
        requested: ``auto`` (or None) or a source name.

    Raises:
        DataError: no presence scores at all.
        ConfigError: a named source the predictions do not hold.
    """
    if hasattr(available, "presence_sources"):
        sources = list(available.presence_sources)
    else:
        sources = list(available)
    if requested in (None, "", "auto"):
        ordered = presence_order(sources)
        if not ordered:
            raise DataError("predictions carry no presence scores", "re-run `fxbench eval` to write them")
        return ordered[0]
    if requested not in sources:
        if requested in DERIVED_PRESENCE:
            raise ConfigError(f"presence source '{requested}' depends on a pixel threshold and is not stored",
                              f"it is added where a decision is applied (tune, eval); here use one of: {', '.join(sources) or 'none'}")
        raise ConfigError(f"presence source '{requested}' is not in the predictions",
                          f"available: {', '.join(sources) or 'none'} (or auto)")
    return str(requested)


def _number(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return math.nan
    return f


def composite_value(name: str, metrics: Mapping[str, Any]) -> float:
    """The composite ``name`` from plain ``metrics``; NaN when any part is NaN or missing.

    Raises:
        KeyError: ``name`` is not a composite metric.
    """
    parts = [_number(metrics.get(k)) for k in COMPOSITE_METRICS[name]]
    return math.nan if any(math.isnan(p) for p in parts) else float(sum(parts))


def metric_value(name: str, metrics: Mapping[str, Any]) -> float:
    """A plain or composite metric from ``metrics`` as a float (NaN when undefined)."""
    if name in COMPOSITE_METRICS:
        return composite_value(name, metrics)
    return _number(metrics.get(name))


def with_composites(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every composite added (in place; returned for chaining)."""
    for name in COMPOSITE_METRICS:
        metrics[name] = composite_value(name, metrics)
    return metrics


def composite_array(name: str, columns: Mapping[str, Any]) -> Any:
    """The composite ``name`` over grid columns (numpy arrays): NaN where any part is NaN."""
    import numpy as np

    parts = [np.asarray(columns[k], dtype=np.float64) for k in COMPOSITE_METRICS[name]]
    return np.sum(parts, axis=0)


def selection_keys(values: Any) -> Any:
    """:func:`selection_key` over an array: NaN -> -inf (float64)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(x), -np.inf, x)


def selection_key(value: Any) -> float:
    """Sort key of a selection score: the number itself, NaN/None -> -inf (never wins)."""
    f = _number(value)
    return -math.inf if math.isnan(f) else f


def binarize_mask(values: Any) -> Any:
    """The one mask binarisation rule: a pixel is fracture when its stored value is non-zero.

    Holds for every mask fxbench reads: its own 0/255 PNGs (``PREP/masks``, jpeg-cache masks),
    0/1 label maps of other tools (nnU-Net, peers) and palette PNGs. Returns bool, same shape.
    """
    import numpy as np

    return np.asarray(values) != 0
