"""benchmarks/gpu_check.sh --emulate: the device run's phases on CPU, in a device-like Python.

The device's Python has torch & co. but no pydantic/platformdirs (and another typer). The test
builds that situation offline: a site folder of links to this environment's packages *minus*
the carried distributions, run with ``python -S`` (no site-packages, no .pth files), and wheels
repacked from the installed distributions by benchmarks/carry.py (the device gets real cp312
wheels from ``pip download``). Then it checks the OUT contract the device's return channel
imposes: <= 8 small files, at most one level down, summary.json with every phase ok.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["install", "data", "bench_eager", "seed_0", "seed_1", "ensemble", "cuda_tests", "bench_compile"]


def _carry():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("fxbench_carry", ROOT / "benchmarks" / "carry.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device_like_site(dest: Path, carried: tuple[str, ...]) -> Path:
    """Links to every entry of this environment's site-packages except the carried
    distributions (their packages and dist-info), .pth files and fxbench's own install."""
    import importlib.metadata as md

    drop: set[str] = {"fxbench"}
    for name in carried:
        dist = md.distribution(name)
        drop.update(Path(str(f)).parts[0] for f in dist.files or [])
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        stem = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if entry.name in drop or stem.lower() in {d.lower() for d in drop} or entry.suffix == ".pth" \
                or entry.name.startswith(("__editable__", "fxbench")):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.slow
def test_emulated_device_run_keeps_the_out_contract(tmp_path: Path) -> None:
    carry = _carry()
    wheels = tmp_path / "whl"
    built = carry.build_wheels(wheels, local=True)
    assert sorted(w.name.split("-")[0] for w in built) == sorted(n.replace("-", "_") for n in carry.WHEELS)
    site = _device_like_site(tmp_path / "devsite", carry.MISSING_ON_DEVICE)
    python = f"{sys.executable} -S"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FXBENCH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    # The situation holds: torch imports, pydantic and platformdirs do not.
    probe = "import torch, numpy, PIL, yaml, rich\nfor m in ('pydantic', 'platformdirs'):\n" \
            "    try:\n        __import__(m)\n    except ImportError:\n        print('missing', m)\n"
    res = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["missing pydantic", "missing platformdirs"]

    out, work = tmp_path / "OUT", tmp_path / "work"
    env.update(FXBENCH_PYTHON=python, FXBENCH_WHEELS=str(wheels), FXBENCH_GPU_WORK=str(work),
               # a shared 2-core CI machine may be loaded: stretch the limits, never assert on time
               FXBENCH_GPU_LIMIT_SCALE="6")
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--emulate", str(out)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=False, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

    # The OUT contract: <= 8 files, none deeper than one folder, each small.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 2 for p in out.rglob("*")), list(out.rglob("*"))
    assert all(p.stat().st_size < 2**20 for p in files), [(p.name, p.stat().st_size) for p in files]
    assert {"summary.json", "gpu_check.log", "bench_eager.json", "bench_compile.json", "seeds.json",
            "leaderboard.md"} <= {p.name for p in files}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "emulate" and summary["ok"] is True
    assert [p["phase"] for p in summary["phases"]] == PHASES
    for phase in summary["phases"]:
        assert phase["status"] == "ok", phase
        took = phase["seconds"]  # the record's field, not a speed check (the test asserts nothing about time)
        assert isinstance(took, float) and took >= 0 and isinstance(phase["numbers"], dict)
    numbers = {p["phase"]: p["numbers"] for p in summary["phases"]}
    # pydantic, platformdirs and typer came from the carried wheels, fxbench from this checkout.
    assert all(c["from_carried_wheels"] for c in numbers["install"]["carried"].values()), numbers["install"]
    assert Path(numbers["install"]["fxbench_file"]).resolve().is_relative_to(ROOT / "src")
    for bench in ("bench_eager", "bench_compile"):
        row = numbers[bench]["rows"][0]
        assert row["fxbench"] > 0 and row["ceiling"] > 0 and row["b_over_a"] > 0 and row["b_over_c"] > 0
    seeds = json.loads((out / "seeds.json").read_text())
    assert sorted(seeds) == ["0", "1"]
    assert all(s["stage"] == "test" and 0.0 <= s["test"]["roc_auc_presence"] <= 1.0 and "dice_pos" in s["val"]
               for s in seeds.values())
    assert numbers["ensemble"]["members"] == 2 and "dice_pos" in numbers["ensemble"]["test"]
    # On a CPU every CUDA test is collected and skipped (none fails to import or errors).
    cuda = numbers["cuda_tests"]
    assert cuda["rc"] == 0 and cuda.get("skipped", 0) >= 1 and "failed" not in cuda and "error" not in cuda, cuda
    assert "seed_0" in (out / "leaderboard.md").read_text()
    # Runs and data stayed outside OUT.
    assert (work / "runs" / "seed_0" / "checkpoints" / "best.pt").is_file()
