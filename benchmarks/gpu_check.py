"""The one-command device run (``bash benchmarks/gpu_check.sh [--emulate] OUT``), ordered by value.

Standard library only: it runs before the carried wheels (pydantic, platformdirs, typer) are
installed. Each phase is one child process under coreutils ``timeout``; a phase's limit is its own
budget, cut to what is left of the whole run's deadline, so the command ends inside it even when
phases hang. After every phase ``OUT/summary.json`` is rewritten (phase, seconds, status, numbers),
so whatever a kill at the 10-minute mark leaves behind is already in ``OUT``.

Phases (most valuable first; docs/performance.md has the budget and its basis):

  install      carried wheels -> a private site folder; versions, GPU name
  data         the real prepared folder (.realcache/prepared) is there (emulation: synthesise one)
  bench_eager  fxbench bench: seed-style loop (a) vs fxbench (b) vs ceiling (c), b/a, b/c, anchor
  seed_<S>     per seed: train -> eval val -> tune -> eval test; OUT/seeds.json after each seed
  ensemble     ensemble of the seeds (val-tuned, test once) + report -> OUT/leaderboard.md
  cuda_tests   pytest -m cuda
  bench_compile  the bench again, compiled (training and inference), same synthetic data

``OUT`` holds at most 7 small files, none in a folder: summary.json, gpu_check.log,
bench_eager.json, bench_compile.json, seeds.json, leaderboard.md, cuda_tests.txt. Runs, data and
the site folder live in a work folder outside ``OUT`` (``FXBENCH_GPU_WORK``, default
/tmp/fxbench-gpu-work). Exit status 0 only when every phase finished ``ok``.

Environment: ``FXBENCH_PYTHON`` (the Python command, default ``python3``; split like a shell
word list), ``FXBENCH_WHEELS`` (default ``.whl``), ``FXBENCH_GPU_PREPARED`` (default
``.realcache/prepared``), ``FXBENCH_GPU_EPOCHS`` (default 12), ``FXBENCH_GPU_SEEDS`` (default
0,1,2; emulation 0,1), ``FXBENCH_GPU_BUDGET_S`` (default 540; emulation 85), ``FXBENCH_GPU_LIMIT_SCALE`` (default
1: stretches every limit and the budget, for a loaded machine).

``python3 benchmarks/gpu_check.py --phase NAME ...`` is how the driver runs one phase (it then
imports fxbench and runs the CLI verbs in this one process: one interpreter start per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The carried wheels provide these; the device's Python (3.12, torch 2.11) lacks the first two.
CARRIED = ("pydantic", "platformdirs", "typer")
OUT_FILES = ("summary.json", "gpu_check.log", "bench_eager.json", "bench_compile.json", "seeds.json",
             "leaderboard.md", "cuda_tests.txt")

# Per-phase limits in seconds on the H200 (device) and on a 2-core CPU (emulation). The basis of
# each device number is in docs/performance.md ("The device run's budget"); the run's deadline
# (540 s) caps them all, so their sum may exceed it: later phases get what is left.
LIMITS = {
    "install": (45, 30), "data": (20, 20), "bench_eager": (120, 30), "seed": (100, 25),
    "ensemble": (45, 15), "cuda_tests": (75, 15), "bench_compile": (150, 30),
}

# Device settings: the best recipe (examples/fxbench_best.yaml) at its 384 px, fewer epochs.
DEVICE_BENCH = ["--device", "cuda", "--models", "unet_dual:256,deeplabv3_resnet50:384", "--n-images", "200",
                "--batch", "32", "--steps", "30", "--seed-steps", "20", "--warmup", "5"]
EMULATE_BENCH = ["--device", "cpu", "--models", "unet_dual:32", "--n-images", "12", "--image-scale", "0.1",
                 "--batch", "4", "--steps", "2", "--seed-steps", "1", "--warmup", "1", "--amp", "none"]
EMULATE_RECIPE = ["data.image_size=64", "model.name=unet_dual", "model.base_channels=8", "train.batch_size=4", "train.eval_batch_size=16",
                  "train.max_steps_per_epoch=2", "eval.bootstrap=0", "runtime.device=cpu", "runtime.amp=none",
                  "eval.tta=none", "runtime.num_threads=2"]


# ---------------------------------------------------------------------------------------- driver


class Driver:
    def __init__(self, out: Path, emulate: bool) -> None:
        self.out, self.emulate = out, emulate
        self.work = Path(os.environ.get("FXBENCH_GPU_WORK", "/tmp/fxbench-gpu-work")).resolve()
        self.site = self.work / "site"
        self.python = shlex.split(os.environ.get("FXBENCH_PYTHON", "python3"))
        # FXBENCH_GPU_LIMIT_SCALE stretches every limit and the budget (a shared, loaded CI machine).
        self.scale = float(os.environ.get("FXBENCH_GPU_LIMIT_SCALE", "1"))
        self.budget = self.scale * float(os.environ.get("FXBENCH_GPU_BUDGET_S", "85" if emulate else "540"))
        # The emulation trains two seeds (same per-seed phase, and enough for the ensemble): a third
        # would cost ~12 CPU seconds of its 90-s budget and test nothing new.
        seeds = os.environ.get("FXBENCH_GPU_SEEDS", "0,1" if emulate else "0,1,2")
        self.seeds = [int(s) for s in seeds.split(",") if s.strip()]
        self.t0 = time.monotonic()
        self.phases: list[dict[str, Any]] = []
        self.log = open(out / "gpu_check.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def say(self, text: str) -> None:
        line = f"== [{time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(self.site), str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", COLUMNS="200",
                   FXBENCH_HOME=str(self.work / "home"), FXBENCH_RUNS=str(self.work / "runs"),
                   FXBENCH_OFFLINE="1", MPLBACKEND="Agg", TERM="dumb")
        return env

    def write_summary(self) -> None:
        data = {
            "mode": "emulate" if self.emulate else "device", "budget_s": self.budget, "limit_scale": self.scale,
            "elapsed_s": round(time.monotonic() - self.t0, 1), "work": str(self.work),
            "ok": bool(self.phases) and all(p["status"] == "ok" for p in self.phases), "phases": self.phases,
        }
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "summary.json")

    def plan(self) -> list[tuple[str, str, list[str]]]:
        """(phase, limit key, argv after --phase)."""
        steps = [("install", "install", []), ("data", "data", []), ("bench_eager", "bench_eager", [])]
        steps += [(f"seed_{s}", "seed", ["--seed", str(s)]) for s in self.seeds]
        steps += [("ensemble", "ensemble", []), ("cuda_tests", "cuda_tests", []),
                  ("bench_compile", "bench_compile", [])]
        return steps

    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        self.phases = [{"phase": name, "status": "pending", "seconds": None, "numbers": {}} for name, _, _ in plan]
        self.write_summary()
        for entry, (name, key, args) in zip(self.phases, plan, strict=True):
            left = self.budget - (time.monotonic() - self.t0)
            limit = min(int(self.scale * LIMITS[key][1 if self.emulate else 0]), int(left))
            if limit < 3:
                entry.update(status="skipped", note="no time left in the run's budget")
                self.say(f"{name}: skipped (budget spent)")
                self.write_summary()
                continue
            self.say(f"{name} (limit {limit} s)")
            entry.update(status="running", timeout_s=limit)
            self.write_summary()
            t, cpu = time.monotonic(), _children_cpu()
            rc = self.run_phase(name, args, limit)
            numbers = self.read_numbers(name)
            entry["cpu_s"] = round(_children_cpu() - cpu, 1)  # CPU seconds of the phase's processes
            # 124/137: timeout's TERM/KILL of the child; -9: the KILL reached timeout itself.
            status = "ok" if rc == 0 else "timeout" if rc in (124, 137, -9) else "failed"
            entry.update(status=status, rc=rc, seconds=round(time.monotonic() - t, 1), numbers=numbers)
            self.say(f"{name}: {status} (rc {rc}) in {entry['seconds']} s")
            self.write_summary()
        self.say("done: " + ", ".join(f"{p['phase']} {p['status']}" for p in self.phases))
        self.write_summary()
        return 0 if all(p["status"] == "ok" for p in self.phases) else 1

    def run_phase(self, name: str, args: list[str], limit: int) -> int:
        """One phase in a child process under ``timeout`` (install: pip first, same limit)."""
        t = time.monotonic()
        if name == "install":
            rc = self.install(limit)
            if rc:
                return rc
            limit = max(1, int(limit - (time.monotonic() - t)))
        phase = "seed" if name.startswith("seed_") else name
        cmd = ["timeout", "-k", "5", str(limit), *self.python, str(Path(__file__).resolve()), "--phase", phase,
               *args, "--out", str(self.out), "--work", str(self.work), *(["--emulate"] if self.emulate else [])]
        return self.stream(cmd)

    def install(self, limit: int) -> int:
        """pip-install the carried wheels into the site folder (offline, no deps, no compile)."""
        wheels = sorted(Path(os.environ.get("FXBENCH_WHEELS", ROOT / ".whl")).resolve().glob("*.whl"))
        if not wheels and self.emulate:
            # A CPU machine with no .whl/: repack this Python's own installs (offline), so the
            # emulation runs as documented on a fresh checkout.
            local = self.work / "whl"
            self.say(f"no carried wheels in .whl/: repacking this Python's installs into {local}")
            rc = self.stream(["timeout", "-k", "5", str(limit), *self.python, str(ROOT / "benchmarks" / "carry.py"),
                              "--local-wheels", "--wheels-only", "--wheels", str(local)])
            if rc:
                return rc
            wheels = sorted(local.glob("*.whl"))
        if not wheels:
            self.say("no carried wheels (.whl/*.whl): build them with benchmarks/carry.sh")
            return 2
        shutil.rmtree(self.site, ignore_errors=True)
        cmd = ["timeout", "-k", "5", str(limit), *self.python, "-m", "pip", "install", "-q", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--target",
               str(self.site), *map(str, wheels)]
        self.say(f"installing {len(wheels)} wheels into {self.site}")
        return self.stream(cmd)

    def stream(self, cmd: list[str]) -> int:
        """Run ``cmd``; its output goes to the terminal and the log as it comes."""
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            self.log.write(line)
        return proc.wait()

    def read_numbers(self, name: str) -> dict[str, Any]:
        path = self.work / "numbers" / f"{name}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        if name.startswith("bench_") and (self.out / f"{name}.json").is_file():  # rows written before a kill
            try:
                return _bench_numbers(json.loads((self.out / f"{name}.json").read_text(encoding="utf-8")))
            except ValueError:
                return {}
        return {}


def _children_cpu() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


# ---------------------------------------------------------------------------------------- phases


def _numbers(work: Path, name: str, numbers: dict[str, Any]) -> None:
    folder = work / "numbers"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(numbers, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, folder / f"{name}.json")


def _fx(*args: str) -> None:
    """Run one fxbench CLI command in this process; raise on a non-zero exit."""
    from fxbench.cli.app import app

    print("$ fxbench " + " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.monotonic()
    try:
        code = app(list(args), prog_name="fxbench", standalone_mode=False)
    except SystemExit as err:
        code = err.code
    print(f"  ({args[0]}: {time.monotonic() - t:.1f} s)", flush=True)
    if code not in (0, None):
        raise RuntimeError(f"fxbench {args[0]} exited with {code}")


def _prepared(work: Path, emulate: bool) -> Path:
    if emulate:
        return work / "prepared"
    return Path(os.environ.get("FXBENCH_GPU_PREPARED", ROOT / ".realcache" / "prepared")).resolve()


def _recipe_sets(work: Path, emulate: bool) -> list[str]:
    sets = [f"data.prepared={_prepared(work, emulate)}", "train.log_every_steps=100"]
    if emulate:
        return sets + ["train.epochs=1", *EMULATE_RECIPE]
    epochs = os.environ.get("FXBENCH_GPU_EPOCHS", "12")
    return sets + [f"train.epochs={epochs}", "train.val_every_epochs=2", "eval.bootstrap=500",
                   "runtime.device=cuda"]


def phase_install(out: Path, work: Path, emulate: bool) -> None:
    import importlib
    import platform

    found = {}
    for name in CARRIED:
        mod = importlib.import_module(name)
        carried = str(Path(str(mod.__file__)).resolve()).startswith(str((work / "site").resolve()))
        found[name] = {"version": getattr(mod, "__version__", getattr(mod, "VERSION", "?")), "file": mod.__file__,
                       "from_carried_wheels": carried}
        if not carried:
            print(f"note: {name} comes from {mod.__file__}, not the carried wheels")
    import torch

    import fxbench

    numbers: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "fxbench": fxbench.__version__, "fxbench_file": fxbench.__file__,
        "carried": found,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        numbers.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                       bf16=torch.cuda.is_bf16_supported())
    elif not emulate:
        raise RuntimeError("CUDA is not available on this machine (use --emulate on a CPU)")
    print(json.dumps(numbers, indent=1))
    _numbers(work, "install", numbers)
    _fx("--version")


def phase_data(out: Path, work: Path, emulate: bool) -> None:
    prep = _prepared(work, emulate)
    if emulate:
        shutil.rmtree(prep, ignore_errors=True)
        _fx("synth", str(work / "archive"), "--n-images", "40", "--scale", "0.2", "--large-fraction", "0.05",
            "--positive-fraction", "0.4", "--seed", "0", "--force")
        _fx("prepare", "--archive", str(work / "archive"), "--out", str(prep), "--split-mode", "grouped",
            "--cache-size", "64", "--cache-format", "jpeg", "--jpeg-quality", "85", "--workers", "1")
    manifest = prep / "manifest.csv"
    caches = sorted((prep / "cache").glob("*.npz")) if prep.is_dir() else []
    if not manifest.is_file() or not caches:
        raise RuntimeError(f"no prepared folder at {prep} (manifest.csv + cache/<S>.npz): run benchmarks/carry.sh")
    with open(manifest, encoding="utf-8") as fh:
        rows = sum(1 for _ in fh) - 1
    numbers = {"prepared": str(prep), "images": rows,
               "caches": {c.name: round(c.stat().st_size / 2**20, 1) for c in caches}}
    print(json.dumps(numbers))
    _numbers(work, "data", numbers)


def _bench(out: Path, work: Path, emulate: bool, name: str, extra: list[str]) -> None:
    args = ["bench", *(EMULATE_BENCH if emulate else DEVICE_BENCH), *extra, "--work-dir", str(work / "bench"),
            "--out", str(out / f"{name}.json")]
    _fx(*args)
    _numbers(work, name, _bench_numbers(json.loads((out / f"{name}.json").read_text(encoding="utf-8"))))


def _bench_numbers(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "image_size", "seed_loop", "fxbench", "ceiling", "b_over_a", "b_over_c", "b_over_anchor",
            "c_over_anchor", "infer", "infer_hv")
    return {"rows": [{k: r[k] for k in keep if k in r} for r in result["rows"]], "seconds": result.get("seconds"),
            "gpu": result["machine"].get("gpu")}


def phase_bench_eager(out: Path, work: Path, emulate: bool) -> None:
    _bench(out, work, emulate, "bench_eager", [])


def phase_bench_compile(out: Path, work: Path, emulate: bool) -> None:
    extra = ["--compile"] + (["--compile-backend", "eager"] if emulate else [])
    _bench(out, work, emulate, "bench_compile", extra)


def _metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    flat = data.get("metrics", data)
    keep = ("dice_pos", "iou_pos", "dice", "roc_auc_presence", "average_precision_presence", "f1_presence")
    return {k: flat[k] for k in keep if isinstance(flat.get(k), (int, float))}


def phase_seed(out: Path, work: Path, emulate: bool, seed: int) -> None:
    run = work / "runs" / f"seed_{seed}"
    shutil.rmtree(run, ignore_errors=True)
    sets = [a for s in _recipe_sets(work, emulate) for a in ("--set", s)]
    t = time.monotonic()
    _fx("train", "-c", str(ROOT / "examples" / "fxbench_best.yaml"), "--quiet", "--run-dir", str(run),
        "--set", f"train.seed={seed}", *sets)
    numbers: dict[str, Any] = {"seed": seed, "train_s": round(time.monotonic() - t, 1)}
    history = run / "history.csv"
    if history.is_file():
        import csv

        with open(history, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        numbers.update(epochs=len(rows), img_per_s=[float(r["img_per_s"]) for r in rows][-3:],
                       best_val=max((float(r["selection"]) for r in rows if r.get("selection")), default=None))

    def save(stage: str) -> None:  # after each step: a kill later in the phase keeps what is done
        numbers.update(stage=stage, seconds=round(time.monotonic() - t, 1))
        _numbers(work, f"seed_{seed}", numbers)
        seeds_file = out / "seeds.json"
        seeds = json.loads(seeds_file.read_text(encoding="utf-8")) if seeds_file.is_file() else {}
        seeds[str(seed)] = numbers
        tmp = out / ".seeds.json.tmp"
        tmp.write_text(json.dumps(seeds, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, seeds_file)

    save("trained")
    _fx("eval", str(run), "--split", "val")
    numbers["val"] = _metrics(run / "metrics" / "val.json")
    save("val")
    _fx("tune", str(run))
    _fx("eval", str(run), "--split", "test", "--decision", str(run / "decision.json"))
    numbers["test"] = _metrics(run / "metrics" / "test.json")
    save("test")
    print(json.dumps(numbers))


def phase_ensemble(out: Path, work: Path, emulate: bool) -> None:
    runs = sorted(p for p in (work / "runs").glob("seed_*") if (p / "metrics" / "test.json").is_file())
    if len(runs) < 2:
        raise RuntimeError(f"ensemble needs >= 2 finished seeds, found {len(runs)}")
    ens = work / "runs" / "ensemble"
    shutil.rmtree(ens, ignore_errors=True)
    _fx("ensemble", *map(str, runs), "--out", str(ens), "--test", *(["--bootstrap", "0"] if emulate else []))
    report = work / "report"
    shutil.rmtree(report, ignore_errors=True)
    _fx("report", *map(str, runs), str(ens), "--out", str(report), "--no-plots")
    shutil.copyfile(report / "leaderboard.md", out / "leaderboard.md")
    _numbers(work, "ensemble", {"members": len(runs), "val": _metrics(ens / "metrics" / "val.json"),
                                "test": _metrics(ens / "metrics" / "test.json")})


def phase_cuda_tests(out: Path, work: Path, emulate: bool) -> None:
    """``pytest -m cuda`` (on a CPU every test skips: the emulation checks that they collect)."""
    python = shlex.split(os.environ.get("FXBENCH_PYTHON", "python3"))
    # No -q here: addopts has one, and -qq would drop the "N skipped in S s" line.
    cmd = [*python, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-o",
           f"cache_dir={work / 'pytest_cache'}", str(ROOT / "tests" / "test_cuda.py")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace", check=False)
    text = proc.stdout + proc.stderr
    (out / "cuda_tests.txt").write_text(text[-200_000:], encoding="utf-8")
    print(text[-3000:])
    counted = r"\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s"
    summary = next((line for line in reversed(text.splitlines()) if re.search(counted, line)), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    _numbers(work, "cuda_tests", {"rc": proc.returncode, "summary": summary, **counts})
    if proc.returncode != 0:
        raise RuntimeError(f"pytest -m cuda failed (rc {proc.returncode})")


PHASES = {"install": phase_install, "data": phase_data, "bench_eager": phase_bench_eager,
          "ensemble": phase_ensemble, "cuda_tests": phase_cuda_tests, "bench_compile": phase_bench_compile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="folder for the <= 8 files that come back")
    parser.add_argument("--emulate", action="store_true", help="CPU, tiny settings, same phases")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", dest="out_opt", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        out, work = Path(args.out_opt), Path(args.work)
        if args.phase == "seed":
            phase_seed(out, work, args.emulate, args.seed)
        else:
            PHASES[args.phase](out, work, args.emulate)
        return 0
    if not args.out:
        parser.error("give the OUT folder")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return Driver(out, args.emulate).run()


if __name__ == "__main__":
    sys.exit(main())
