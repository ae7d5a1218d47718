"""Data verbs: `fxbench download`, `fxbench prepare`, `fxbench synth`.

Module level imports only typer/rich/stdlib; numpy, PIL and the data stage load inside the
verbs, so `fxbench --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fxbench.cli.common import console, handle_errors


class SplitMode(str, Enum):
    grouped = "grouped"
    seed = "seed"
    official = "official"


class CacheFormat(str, Enum):
    raw = "raw"
    jpeg = "jpeg"


class Resize(str, Enum):
    letterbox = "letterbox"
    stretch = "stretch"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def _stage_progress() -> Iterator[Callable[[str, int, int], None]]:
    """prepare's ``progress(stage, done, total)`` as a Rich bar with rate and ETA on a terminal,
    and as plain lines when stderr is not one (a pipe, ``2>&1 | tee log``): a line per 10% or
    per 15 s and one when a stage ends, so a log fills while it runs.

    Nothing is drawn before the archive has been read, so a bad archive gives only its one
    error line.
    """
    import time

    labels = {"read": "reading annotations", "decode": "decoding images", "write": "writing outputs"}
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed:,.1f}/s" if task.speed else "", style="progress.data.speed")

        prog = Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage == "read" and done == 0 and not tasks:
                return  # the archive is not open yet: no bar for a file that turns out to be no archive
            if not tasks and not prog.live.is_started:
                prog.start()
            if stage not in tasks:
                tasks[stage] = prog.add_task(labels.get(stage, stage), total=total)
            prog.update(tasks[stage], completed=done, total=total)

        try:
            yield update
        finally:
            if tasks:
                prog.stop()
        return

    started: dict[str, float] = {}
    shown: dict[str, tuple[float, int]] = {}

    def line(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        t0 = started.setdefault(stage, now)
        label = labels.get(stage, stage)
        if total <= 1:  # read/write: one step
            if done >= total:
                console.print(f"{label}: done ({now - t0:.1f} s)", markup=False)
            return
        last_t, last_pct = shown.get(stage, (t0, 0))
        pct = int(100 * done / max(total, 1))
        if done < total and pct - last_pct < 10 and now - last_t < 15:
            return
        shown[stage] = (now, pct)
        rate = done / (now - t0) if now > t0 and done else 0.0
        eta = f", ETA {_clock((total - done) / rate)}" if rate and done < total else ""
        end = f" in {_clock(now - t0)}" if done >= total else ""
        console.print(f"{label}: {done:,}/{total:,} ({pct}%), {rate:,.1f}/s{eta}{end}", markup=False)

    yield line


@contextmanager
def _byte_progress() -> Iterator[Callable[[int, int | None], None]]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=console
    ) as prog:
        task = prog.add_task("download", total=None)

        def update(done: int, total: int | None) -> None:
            prog.update(task, completed=done, total=total)

        yield update


# --------------------------------------------------------------------------------------
# download


@handle_errors
def download(
    from_file: Path | None = typer.Option(None, "--from-file", help="Register a FracAtlas.zip obtained elsewhere (offline)."),
    md5: str | None = typer.Option(None, "--md5", help="With --from-file: expected MD5 of the zip."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the archive (default: <data home>/archives)."),
    extract: bool = typer.Option(False, "--extract/--no-extract", help="Also unpack into <data home>/raw/fracatlas (prepare reads the zip directly)."),
    force: bool = typer.Option(False, "--force", help="Download again even if the file exists."),
    api_url: str | None = typer.Option(None, "--api-url", help="figshare API URL (default: article 22363012, version 6)."),
) -> None:
    """Download FracAtlas from figshare (pinned v6, MD5-checked, resumable), or register a local zip."""
    from fxbench.data import archive as arc
    from fxbench.paths import raw_dir

    if from_file is not None:
        path = arc.register_file(from_file, out, md5)
        console.print(f"registered {path} (not copied)")
    else:
        with _byte_progress() as progress:
            path = arc.download(out, api_url or arc.API_URL, force=force, progress=progress)
        console.print(f"archive ready: {path} (MD5 verified)")
    if extract:
        dest = arc.extract_zip(path, raw_dir() / "fracatlas", force=force)
        console.print(f"extracted to {dest}")
    # prepare finds the archive on its own only where download registers it by default.
    registered = out is None and arc.registered_archive() is not None
    where = "" if registered else f" --archive {path}"
    console.print(f"next: fxbench prepare{where} --split-mode seed --cache-size 256   (the README's real-data workflow)",
                  markup=False)


# --------------------------------------------------------------------------------------
# prepare


def _summary_table(report: dict[str, Any]) -> Table:
    table = Table(title="prepare_report.json", show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    counts = report.get("split_counts", {})
    rows = [
        ("images", f"{report['images']:,}"),
        ("fractured (label, from annotations)", f"{report['fractured']:,}"),
        ("csv fractured column (as written)", f"{report.get('csv_fractured', 0):,}"),
        *[(f"polygons: {k}", f"{v:,}") for k, v in report.get("polygons", {}).items()],
        ("polygons rasterized", f"{report.get('polygons_rasterized', 0):,} (from {', '.join(f'{k} {v}' for k, v in report.get('rasterized_from', {}).items())})"),
        ("disagreements (images)", f"{report.get('disagreement_count', 0):,}"),
        ("ground-truth boxes", _boxes_line(report.get("gt_boxes") or {})),
        ("EXIF-rotated", f"{report['exif_rotated']:,}"),
        ("truncated JPEGs", f"{report['truncated']:,}"),
        ("duplicate groups (pixel-identical)", f"{report['duplicate_groups']:,}"),
        ("cross-split duplicate groups", f"{report['cross_split_duplicate_groups']:,}"),
        ("split", f"{report['split_mode']} mode, seed {report.get('seed')}"),
        ("train / val / test", f"{counts.get('train', 0):,} / {counts.get('val', 0):,} / {counts.get('test', 0):,}"),
        ("split ratios", " / ".join(f"{v:g}" for v in report.get("split_ratios", {}).values())),
        ("split sha256", report["split_sha256"][:16] + "..."),
        *_fold_rows(report.get("folds")),
        ("skipped images", f"{len(report.get('skipped_images', [])):,}"),
        ("warnings", f"{report.get('warnings_count', 0):,}"),
    ]
    for size, c in report.get("caches", {}).items():
        quality = f" q{c['jpeg_quality']}" if "jpeg_quality" in c else ""
        rows.append((f"cache {size}.npz", f"{c.get('geometry', 'letterbox')}, {c['format']}{quality}, {c['bytes'] / 1e6:,.1f} MB"))
    if "timings_s" in report:
        rows.append(("time (s)", f"{report['timings_s']['total']:.1f}"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _fold_rows(folds: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not folds:
        return []
    return [
        (f"cv folds (seed {folds['seed']})", f"{folds['k']}: images {' / '.join(map(str, folds['images_per_fold']))}"),
        ("cv positives per fold", " / ".join(map(str, folds["positives_per_fold"]))),
        ("cv duplicate groups across folds", f"{folds['crossing_duplicate_groups']:,}"),
    ]


@handle_errors
def prepare(
    archive: Path | None = typer.Option(None, "--archive", help="FracAtlas zip or extracted folder (default: the one `fxbench download` registered)."),
    out: Path | None = typer.Option(None, "--out", help="Prepared folder (default: <data home>/prepared/fracatlas)."),
    split_mode: SplitMode | None = typer.Option(None, "--split-mode", help="grouped (default): stratified, pixel-identical duplicates kept together; seed: the seed benchmark's split; official: FracAtlas' positive split + seeded negatives. Rerunning on a prepared folder keeps its mode unless given."),
    seed: int | None = typer.Option(None, "--seed", help="Split seed (default 42, or the folder's current one)."),
    cache_size: list[int] | None = typer.Option(None, "--cache-size", help="Cache edge in px (repeatable). Default: keep the folder's caches, or 512 for a new folder. Other caches in the folder are kept."),
    resize: Resize | None = typer.Option(None, "--resize", help="Geometry of the --cache-size caches: letterbox (aspect kept, zero padding; cache/S.npz) or stretch (both axes to S, the seed's default; cache/S-stretch.npz). Default letterbox; needs --cache-size. Train with the matching data.resize."),
    train_ratio: float | None = typer.Option(None, "--train-ratio", help="Train share for the seed and grouped modes (default 0.70, or the folder's current one)."),
    val_ratio: float | None = typer.Option(None, "--val-ratio", help="Val share for the seed and grouped modes (default 0.15, or the folder's current one); test gets the rest."),
    cache_format: CacheFormat = typer.Option(CacheFormat.raw, "--cache-format", help="Format of the --cache-size caches. raw: uint8 arrays; jpeg: compact (JPEG images, PNG masks)."),
    force: bool = typer.Option(False, "--force", help="Redo everything even if the outputs are up to date."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Decode processes (default: all cores)."),
    folds: int | None = typer.Option(None, "--folds", is_flag=False, flag_value=5, help="Also assign K cross-validation folds (`--folds` alone: 5), stratified by label, duplicate groups whole; 0 removes them. Default: keep the folder's folds."),
    jpeg_quality: int | None = typer.Option(None, "--jpeg-quality", min=1, max=100, help="JPEG quality of --cache-format jpeg caches (default 95; 85 makes a 384-px cache of FracAtlas about 40 MB)."),
) -> None:
    """Decode, check and split the archive: masks, manifest.csv, prepare_report.json, caches."""
    from fxbench.data.archive import registered_archive
    from fxbench.data.folds import prepared_folds
    from fxbench.data.prepare import current_ratios, current_split
    from fxbench.data.prepare import prepare as run_prepare
    from fxbench.data.splits import TRAIN_RATIO, VAL_RATIO
    from fxbench.errors import DataError
    from fxbench.paths import prepared_dir

    if archive is None:
        archive = registered_archive()
        if archive is None:
            raise DataError("no --archive given and no archive registered", "pass --archive PATH, or run `fxbench download` (or `fxbench download --from-file ZIP`)")
    if resize is not None and not cache_size:
        from fxbench.errors import UsageError

        raise UsageError("--resize applies to the caches named by --cache-size", f"add e.g. --cache-size 256 --resize {resize.value}")
    out = out or prepared_dir()
    # Adding a cache size to a prepared folder must not silently change its split (runs
    # trained on it would no longer match): unless asked, keep the folder's mode and seed.
    existing = current_split(out)
    mode = split_mode.value if split_mode else existing[0] if existing else "grouped"
    split_seed = seed if seed is not None else existing[1] if existing and mode == existing[0] else 42
    if existing and split_mode is None and seed is None:
        console.print(f"keeping split mode '{mode}' (seed {split_seed}) of {out}; pass --split-mode to change it", markup=False)
    old_ratios = current_ratios(out) if existing and mode == existing[0] else None
    ratios = (
        train_ratio if train_ratio is not None else old_ratios[0] if old_ratios else TRAIN_RATIO,
        val_ratio if val_ratio is not None else old_ratios[1] if old_ratios else VAL_RATIO,
    )
    if folds is None:  # like the split: a rerun keeps the folder's folds unless told otherwise
        folds = (prepared_folds(out) or {}).get("k")
    with _stage_progress() as progress:
        result = run_prepare(
            archive, out, split_mode=mode, seed=split_seed, cache_sizes=tuple(cache_size) if cache_size else None,
            cache_format=cache_format.value, force=force, workers=workers, progress=progress,
            resize=resize.value if resize else "letterbox", train_ratio=ratios[0], val_ratio=ratios[1], folds=folds or None, jpeg_quality=jpeg_quality,
        )
    if result.skipped:
        console.print(f"up to date: {out} (inputs and options unchanged; --force redoes it)")
    console.print(_summary_table(result.report))
    if result.report.get("skipped_images"):
        console.print(f"[yellow]{len(result.report['skipped_images'])} image(s) skipped; see skipped_images in {out / 'prepare_report.json'}[/]")
    console.print(f"next: {_train_hint(out, result.report, tuple(cache_size or ()), resize.value if resize else 'letterbox')}",
                  markup=False)


# --------------------------------------------------------------------------------------
# synth


@handle_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to receive FracAtlas/ (or the .zip path with --zip)."),
    n_images: int = typer.Option(64, "--n-images", min=8, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Generator seed (same seed, same bytes)."),
    as_zip: bool = typer.Option(False, "--zip", help="Write a zip instead of a folder."),
    scale: float = typer.Option(1.0, "--scale", min=0.05, max=2.0, help="Image size factor (1.0: 373x454 and 2304x2880 like FracAtlas)."),
    large_fraction: float = typer.Option(0.1, "--large-fraction", min=0.0, max=0.9, help="Share of large (2304x2880) images."),
    positive_fraction: float = typer.Option(0.2, "--positive-fraction", min=0.05, max=0.9, help="Share of fractured images."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing archive."),
) -> None:
    """Write a synthetic FracAtlas-layout archive (for demos and tests)."""
    from fxbench.data.synthetic import make_synthetic

    plan = make_synthetic(out, n_images, seed, as_zip, large_fraction, positive_fraction, scale, overwrite=force)
    console.print(f"wrote {out}: {n_images} images, {len(plan.positives)} fractured")
    prep = out.with_name(f"{out.name.removesuffix('.zip')}-prepared")
    console.print(f"next: fxbench prepare --archive {out} --out {prep} --cache-size 64", markup=False)


def _train_hint(out: Path, report: dict[str, Any], asked: tuple[int, ...], resize: str) -> str:
    """A train command that works on ``out`` as printed: its image size is a cache the folder
    has (the one just asked for, else the smallest), floored to a multiple of 32."""
    from fxbench.data.cache import parse_cache_key

    have = [k for k in (parse_cache_key(str(name)) for name in report.get("caches", {})) if k]
    pick = [k for k in have if k[0] in asked and k[1] == resize] or sorted(have)
    if not pick:
        return f"fxbench prepare --out {out} --cache-size 256   (the folder has no cache yet)"
    size, geometry = pick[0]
    edge = max(32, size // 32 * 32)
    extra = " --set data.resize=stretch" if geometry == "stretch" else ""
    return f"fxbench train --set data.prepared={out} --set data.image_size={edge}{extra} --run-dir runs/first"


def register(app: typer.Typer) -> None:
    """Add this module's verbs to ``app``."""
    app.command("download")(download)
    app.command("prepare")(prepare)
    app.command("synth")(synth)


def _boxes_line(gt: dict[str, Any]) -> str:
    """``922 (from yolo 717; 0 disagree with the polygons)`` for the prepare summary."""
    if not gt:
        return "-"
    src = ", ".join(f"{k} {v}" for k, v in (gt.get("from") or {}).items()) or "none"
    return f"{gt.get('total', 0):,} (from {src}; {gt.get('disagreements', 0)} disagree with the polygons)"

