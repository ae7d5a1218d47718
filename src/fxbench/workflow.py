"""The application layer: chains of stages that the CLI verbs and the demo call.

Train one run, evaluate a run on a split (the test split under the seal). The stage packages
stay independent of each other; only this module (and cli/) chains them. Sweeps are
:mod:`fxbench.launch`'s job: it calls :func:`train_run` once per job, so this module never
imports launch (see the table in docs/internals.md).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fxbench.config import Config
from fxbench.errors import UsageError
from fxbench.io import read_json, sha256_file, write_json_atomic


def train_run(cfg: Config, run_dir: Path, resume: bool = False,
              on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    from fxbench.artifacts.run import refuse_fresh_start
    from fxbench.errors import CheckpointError
    from fxbench.runtime import dist_info
    from fxbench.train.loop import Trainer

    run_dir = Path(run_dir)
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(f"{run_dir} has no checkpoints/last.pt to resume from",
                              "it stopped before its first checkpoint: start it again with `fxbench train --run-dir`")
    if not resume and dist_info()[0] == 0:
        refuse_fresh_start(run_dir)
    return Trainer(cfg, run_dir, resume=resume, on_progress=on_progress).run()


def cv_fold_count(cfg: Config) -> int:
    """K of the prepared folder ``cfg`` trains on (its ``prepare --folds K``)."""
    from fxbench.data.folds import prepared_folds
    from fxbench.errors import DataError
    from fxbench.paths import prepared_dir

    prep = cfg.data.prepared or prepared_dir()
    info = prepared_folds(prep)
    if info is None:
        raise DataError(f"{prep} has no cross-validation folds", f"run `fxbench prepare --out {prep} --folds 5` first")
    return int(info["k"])


def train_fold(cfg: Config, fold: int, run_dir: Path, resume: bool = False,
               on_progress: Callable[[Any], None] | None = None, tune_metric: str = "dice_pos") -> dict[str, Any]:
    """One cross-validation fold run, start to end: what ``train --fold`` and a launcher's fold
    job call (:func:`fxbench.launch.jobs.run_job` runs it for a fold job).

    Trains (or with ``resume``, continues) fold ``fold``'s run (``data.fold=fold``: the K-1 other
    folds minus an inner, group-aware val), evaluates val, tunes on val (``RUN/decision.json``),
    then scores the fold's test part once under the seal with that decision. A run whose test
    is already on record is not tested again. Returns a summary (fold, run_dir, status, best
    epoch and score, test metrics path or None).
    """
    from fxbench.artifacts.run import finished_training
    from fxbench.select.tune import tune_run

    run_dir = Path(run_dir)
    fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": int(fold)})})
    done = finished_training(run_dir) if resume else None
    if done is not None:  # resumed after its training finished: only val, tune and test are left
        summary = {"status": "finished", "best_epoch": done.get("best_epoch"), "best_score": done.get("best_score")}
    else:
        summary = train_run(fold_cfg, run_dir, resume=resume, on_progress=on_progress)
    out = {"fold": int(fold), "run_dir": str(run_dir), "status": summary["status"],
           "best_epoch": summary.get("best_epoch"), "best_score": summary.get("best_score"), "test_metrics": None}
    if summary["status"] == "interrupted":
        return out
    if not fold_tested(run_dir):
        evaluate_run(run_dir, "val", argv=["eval", str(run_dir), "--split", "val"])
        tune_run(run_dir, metric=tune_metric)
        decision = run_dir / "decision.json"
        evaluate_run(run_dir, "test", decision_path=decision,
                     argv=["eval", str(run_dir), "--split", "test", "--decision", str(decision)])
    out["test_metrics"] = str(run_dir / "metrics" / "test.json")
    return out


def fold_tested(run_dir: Path) -> bool:
    """Whether a fold run's one sealed test is on record (what ``--skip-existing`` needs to skip it)."""
    from fxbench.select.seal import read_test_access

    return bool(read_test_access(run_dir))


def ensure_predictions(run: Path, split: str, tta: str | None = None,
                       on_predict: Callable[[], None] | None = None) -> Path:
    """``RUN/predictions/<split>.npz``; when missing, the run's network makes it once
    (``on_predict`` is called first). DataError when there is neither an artifact nor a checkpoint."""
    from fxbench.errors import DataError

    path = run / "predictions" / f"{split}.npz"
    if path.is_file():
        return path
    if not (run / "checkpoints").is_dir():
        raise DataError(
            f"{run} has no {split} predictions and no checkpoints to make them",
            f"run `fxbench eval {run} --split val`, or pass a trained run",
        )
    try:
        from fxbench.predict.infer import predict_split
    except ImportError as err:  # a core install without the training stack
        raise DataError(f"{run} has no {split} predictions and inference is unavailable ({err})") from err
    if on_predict is not None:
        on_predict()
    predict_split(run, split, tta)
    return path


def _default_decision(cfg: Config) -> dict[str, Any]:
    """The config's operating point for a val evaluation; it binds no TTA (``--tta`` picks freely)."""
    ev = cfg.eval
    return {
        "threshold": ev.threshold, "presence_source": ev.presence_source, "presence_threshold": ev.presence_threshold,
        "min_component": ev.min_component, "tta": None, "source": "config", "selected_on": None,
    }


def evaluate_run(
    run_dir: Path,
    split: str,
    tta: str | None = None,
    decision_path: Path | None = None,
    threshold: float | None = None,
    which: str = "best",
    prepared: Path | None = None,
    resolution: str | None = None,
    bootstrap: int | None = None,
    repredict: bool = False,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Predict (if needed) and score ``split``; the test split needs a decision or a threshold.

    Writes ``RUN/predictions/<split>.npz`` and ``RUN/metrics/<split>.json``. The test split goes
    through :func:`fxbench.select.seal.score_under_seal` (authorised before anything is
    predicted, logged in ``RUN/test_access.log``). Returns the metrics dict.
    """
    from fxbench.artifacts.predictions import load_predictions
    from fxbench.evaluate import DERIVED_PRESENCE, evaluate_predictions, resolve_presence_source
    from fxbench.predict.infer import load_run_config, predict_split, subgroup_arrays

    run_dir = Path(run_dir)
    if split not in ("val", "test"):
        raise UsageError(f"--split must be val or test, not {split!r}")
    if which not in ("best", "last"):
        raise UsageError(f"--which must be best or last, not {which!r}")
    cfg = load_run_config(run_dir)
    art = run_dir / "predictions" / f"{split}.npz"
    ckpt_name = f"{which}.pt"

    def ensure_predictions(tta_: str) -> Any:
        need = repredict or not art.is_file()
        if not need:
            meta = load_predictions(art).meta
            need = meta.get("tta") != tta_ or meta.get("checkpoint") != ckpt_name
        if need:
            predict_split(run_dir, split, tta=tta_, prepared=prepared, which=which)
        return load_predictions(art)

    def score(pred: Any, decision: dict[str, Any]) -> dict[str, Any]:
        # pred_area is derived at the decision's threshold (never stored), so it resolves too.
        available = [*pred.presence, *DERIVED_PRESENCE]
        decision = {**decision, "presence_source": resolve_presence_source(available, decision.get("presence_source"))}
        metrics = evaluate_predictions(
            pred, decision, bootstrap=cfg.eval.bootstrap if bootstrap is None else bootstrap,
            seed=cfg.eval.bootstrap_seed, subgroups=subgroup_arrays(run_dir, pred.image_ids, prepared),
            resolution=cast(Literal["cache", "native"], resolution or cfg.eval.resolution),
            native_masks_loader=_native_loader(run_dir, cfg, prepared),
            gt_boxes=_gt_boxes(run_dir, cfg, prepared) if cfg.eval.boxes else None,
            box_score=decision.get("box_score") or cfg.eval.box_score, box_bootstrap=cfg.eval.box_bootstrap,
        )
        metrics.update(split=split, run=run_dir.name, tta=decision["tta"], decision_source=decision.get("source"),
                       predictions_sha256=sha256_file(art), checkpoint=ckpt_name)
        return metrics

    if split == "test":
        from fxbench.select.seal import score_under_seal

        ckpt = run_dir / "checkpoints" / ckpt_name
        ckpt_sha = sha256_file(ckpt) if ckpt.is_file() else None

        chosen: dict[str, str] = {}

        def produce(decision: Any) -> Any:
            chosen["tta"] = _choose_tta(tta, decision.tta, cfg.eval.tta)
            pred = ensure_predictions(chosen["tta"])
            got = pred.meta.get("checkpoint_sha256")
            if decision.checkpoint_sha256 and got and got != decision.checkpoint_sha256:
                from fxbench.errors import ProtocolError

                raise ProtocolError(f"the test predictions of {run_dir} come from another {ckpt_name} than the decision's",
                                    f"run `fxbench eval {run_dir} --split test --repredict` with the decision")
            return pred

        command = "fxbench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        return score_under_seal(
            run_dir, produce, kind="run", command=command, decision_path=decision_path, threshold=threshold,
            scorer=lambda pred, d: score(pred, {**d.to_dict(), "tta": chosen["tta"]}), checkpoint=ckpt_name, checkpoint_sha256=ckpt_sha,
            artifact_path=art,
        )
    if decision_path is not None:
        decision = dict(read_json(decision_path))
    else:
        decision = _default_decision(cfg)
        if threshold is not None:
            decision.update(threshold=threshold, source="user-fixed")
    decision["tta"] = _choose_tta(tta, decision.get("tta"), cfg.eval.tta)
    pred = ensure_predictions(decision["tta"])
    metrics = score(pred, decision)
    write_json_atomic(run_dir / "metrics" / f"{split}.json", metrics)
    return metrics


def _choose_tta(requested: str | None, decided: str | None, default: str) -> str:
    """The TTA of an evaluation: the decision fixes it; else --tta; else the config's."""
    tta = requested or decided or default
    if decided and tta != decided:
        raise UsageError(f"--tta {tta} differs from the decision's tta {decided}", "drop --tta; the decision fixes it")
    return tta


def _gt_boxes(run_dir: Path, cfg: Config, prepared: Path | None) -> Any:
    """The prepared folder's ground-truth boxes (None for a folder prepared before boxes.json)."""
    from fxbench.data.boxes import read_gt_boxes
    from fxbench.predict.infer import _run_prepared

    return read_gt_boxes(Path(prepared) if prepared else _run_prepared(run_dir, cfg))


def _native_loader(run_dir: Path, cfg: Config, prepared: Path | None) -> Callable[[str], Any]:
    from fxbench.predict.infer import _run_prepared

    prep = Path(prepared) if prepared else _run_prepared(run_dir, cfg)

    def load(image_id: str) -> Any:
        from fxbench.data.masks import read_prepared_mask

        return read_prepared_mask(prep, image_id)

    return load


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the run folder, its sealed test metrics, the report folder."""

    run: Path
    metrics: dict[str, Any]
    report_dir: Path


def demo_settings(prep: Path, image_size: int, epochs: int, seed: int, device: str) -> list[str]:
    """The ``--set`` overrides of the demo's training run (a small unet_dual)."""
    return [f"data.prepared={prep}", f"data.image_size={image_size}", "model.name=unet_dual", "model.base_channels=16",
            f"train.epochs={epochs}", "train.batch_size=16", f"train.seed={seed}", "optim.lr=3e-3",
            "loss.presence_weight=0.3", "schedule.name=cosine", "schedule.warmup_epochs=1", "eval.bootstrap=1000",
            f"runtime.device={device}"]


def run_demo(
    out_dir: Path, n_images: int, epochs: int, image_size: int, seed: int, device: str,
    step: Callable[[str], None],
    train_display: Callable[[], contextlib.AbstractContextManager[Callable[[Any], None]]],
    on_tuned: Callable[[Any], None],
) -> DemoResult:
    """synth -> prepare -> train -> eval val -> tune -> eval test (sealed, once) -> report in
    ``out_dir``. ``step`` receives the equivalent command line before each stage, ``train_display``
    makes the training progress callback, ``on_tuned`` receives the decision chosen on val."""
    from fxbench.config import load_config
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive
    from fxbench.report import build_report
    from fxbench.select.tune import tune_run

    archive = out_dir / "archive"
    step(f"fxbench synth {archive} --n-images {n_images} --seed {seed}")
    make_synthetic_archive(archive, n_images=n_images, seed=seed, scale=0.3)
    prep = out_dir / "prepared"
    step(f"fxbench prepare --archive {archive} --out {prep} --cache-size {image_size}")
    prepare(archive, prep, split_mode="grouped", seed=42, cache_sizes=(image_size,), cache_format="raw")
    run = out_dir / "runs" / "demo-unet-dual"
    sets = demo_settings(prep, image_size, epochs, seed, device)
    cfg = load_config(None, sets, environ={})
    step(f"fxbench train --run-dir {run} " + " ".join(f"--set {s}" for s in sets))
    with train_display() as display:
        train_run(cfg, run, on_progress=display)
    step(f"fxbench eval {run} --split val")
    evaluate_run(run, "val", argv=["eval", str(run), "--split", "val"])
    step(f"fxbench tune {run}")
    on_tuned(tune_run(run).decision)
    decision = run / "decision.json"
    step(f"fxbench eval {run} --split test --decision {decision}")
    metrics = evaluate_run(run, "test", decision_path=decision,
                           argv=["eval", str(run), "--split", "test", "--decision", str(decision)])
    report_dir = out_dir / "report"
    step(f"fxbench report {run} --out {report_dir}")
    build_report([run], report_dir)
    return DemoResult(run, metrics, report_dir)
