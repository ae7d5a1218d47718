"""Reliability and security (issue 8): untrusted checkpoints, SIGINT/SIGTERM, kill -9, the run
lock, a full disk, numerics, config fuzzing and odd images for `fxbench predict`.

Every CLI-level fault must end with the exit code documented in `fxbench --help` (0 ok, 1 runtime,
2 usage/config, 3 data, 4 protocol, 5 offline), exactly one `error:` line and no traceback; see
:func:`cli`. The data stage (archives, downloads, annotations, corrupt JPEGs in `prepare`) is
covered by tests/test_data_*.py; docs/reliability.md lists both.

Signal, kill and lock tests run `python -m fxbench` in subprocesses (one thread each); the rest
runs the real entry point (`fxbench.cli.app.main`) in-process, which is the same code path as the
console script, minus the interpreter start.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from easy_data import make_easy_prepared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxbench.artifacts import checkpoint as checkpoint_mod
from fxbench.artifacts.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from fxbench.cli.app import HELP, main
from fxbench.config import Config, all_keys, config_from_dict, load_config
from fxbench.errors import CheckpointError, ConfigError, FxbenchError
from fxbench.io import read_json, write_csv_atomic, write_json_atomic
from fxbench.train.loop import HISTORY_FIELDS, Trainer

TIMEOUT = 120  # seconds; generous because the test machine is shared


# ============================================================================ fixtures, helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one torch thread is ~10x faster than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy"), n=48, size=64)


def tiny_sets(prep: Path, **extra: Any) -> list[str]:
    """The tests/test_train.py tiny_cfg pattern, as --set strings (usable in-process and by the CLI)."""
    sets = {
        "data.prepared": prep, "data.image_size": 64, "model.name": "unet_dual", "model.base_channels": 8,
        "train.epochs": 1, "train.batch_size": 8, "train.max_steps_per_epoch": 3, "train.eval_batch_size": 16,
        "eval.bootstrap": 0, "runtime.device": "cpu", "runtime.channels_last": "false", "runtime.num_threads": 1,
        "optim.lr": "3e-3", "loss.presence_weight": 0.2, "augment.rotate_prob": 0.5,
        "train.ema.enabled": "true", "train.ema.decay": 0.9,
        "train.last_every_epochs": 1,  # these tests signal, kill and fill the disk around each epoch's last.pt
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def tiny_cfg(prep: Path, **extra: Any) -> Config:
    return load_config(None, tiny_sets(prep, **extra), environ={})


def set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def trained(easy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (1 epoch): best.pt, last.pt, history, run.json."""
    run = tmp_path_factory.mktemp("trained") / "run"
    summary = Trainer(tiny_cfg(easy), run).run()
    assert summary["status"] == "finished" and (run / "checkpoints" / "best.pt").is_file()
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def cli(args: list[Any], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr).

    Asserts the CLI contract for every outcome: no traceback, and a failure says exactly one
    `error: ...` line on stderr.
    """
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    assert "Traceback" not in err and "Traceback" not in out, err
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, err
    return code, out, err


def error_line(err: str) -> str:
    return next(ln for ln in err.splitlines() if ln.startswith("error:"))


def spawn(args: list[Any]) -> subprocess.Popen[str]:
    """`python -m fxbench ARGS` in its own session, one thread, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fxbench", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test started; any still alive at the end are killed (by their own pid)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=TIMEOUT)


def wait_until(cond: Callable[[], bool], what: str, alive: list[subprocess.Popen[str]] = (),  # type: ignore[assignment]
               timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for p in alive:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"process {p.pid} ended (rc {p.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def history_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == HISTORY_FIELDS
        rows = list(reader)
    for row in rows:
        assert None not in row and all(v is not None for v in row.values()), row  # no short/long rows
    return rows


#: Final names a run folder may hold while training; anything else must be a `.name.*.tmp` file.
RUN_FILES = {"config.resolved.yaml", "env.json", "run.json", "history.csv", ".lock",
             "checkpoints", "checkpoints/best.pt", "checkpoints/last.pt"}


def assert_run_folder_consistent(run: Path) -> list[Path]:
    """Every final-named file parses / loads; returns the leftover temporary files."""
    tmp_files = []
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            tmp_files.append(path)
            continue
        assert rel in RUN_FILES, f"unexpected file {rel}"
    if (run / "config.resolved.yaml").exists():
        config_from_dict(yaml.safe_load((run / "config.resolved.yaml").read_text()))
    for name in ("env.json", "run.json"):
        if (run / name).exists():
            assert isinstance(json.loads((run / name).read_text()), dict)
    if (run / "history.csv").exists():
        history_rows(run)
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).exists():
            ckpt = load_checkpoint(run / "checkpoints" / name)
            assert ckpt["format"] == FORMAT and ckpt["model"]
    return tmp_files


# ============================================================================ untrusted checkpoints


class Evil:
    """Unpickling this would run `touch MARKER` (os.system) - it must never happen."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, kind: str = "torch") -> Path:
    Evil.marker = str(marker)
    payload = {"format": FORMAT, "config_sha256": "x", "model": Evil()}
    if kind == "torch":  # the zip format torch.save writes, with the payload in data.pkl
        torch.save(payload, path)
    else:  # a legacy raw pickle
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    return path


@pytest.mark.parametrize("kind", ["torch", "legacy"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "PWNED"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, kind)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    if kind == "torch":
        assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert not marker.exists()


def _junk_checkpoints(tmp_path: Path, good: bytes) -> dict[str, tuple[Path, str]]:
    def write(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"format": FORMAT, "epoch": 1}, tmp_path / "no_model.pt")
    torch.save({"format": FORMAT, "model": {"w": "not a tensor"}}, tmp_path / "bad_model.pt")
    torch.save({"format": FORMAT, "model": {}, "x": np.zeros(3)}, tmp_path / "numpy.pt")
    return {
        "empty": (write("empty.pt", b""), "not a readable checkpoint"),
        "text": (write("text.pt", b"hello, I am not a checkpoint\n"), "not a readable checkpoint"),
        "random": (write("random.pt", os.urandom(4096)), "refused to load"),
        "truncated": (write("truncated.pt", good[: len(good) // 2]), "not a readable checkpoint"),
        "foreign state dict": (tmp_path / "state_dict.pt", "not an fxbench checkpoint"),
        "foreign list": (tmp_path / "list.pt", "not an fxbench checkpoint"),
        "tagged, no weights": (tmp_path / "no_model.pt", "has no model weights"),
        "tagged, weights not tensors": (tmp_path / "bad_model.pt", "has no model weights"),
        "numpy object inside": (tmp_path / "numpy.pt", "it would import numpy"),
        "missing": (tmp_path / "nope.pt", "checkpoint not found"),
    }


def test_junk_and_foreign_checkpoints_are_one_line_errors(trained: Path, tmp_path: Path) -> None:
    good = (trained / "checkpoints" / "best.pt").read_bytes()
    for name, (path, fragment) in _junk_checkpoints(tmp_path, good).items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert fragment in str(err.value) and "\n" not in str(err.value), (name, str(err.value))


def test_cli_refuses_malicious_and_broken_checkpoints(trained: Path, tmp_path: Path, easy: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    good = (trained / "checkpoints" / "best.pt").read_bytes()
    cases: dict[str, tuple[bytes, str]] = {}
    evil_checkpoint(tmp_path / "evil.pt", marker)
    cases["malicious"] = ((tmp_path / "evil.pt").read_bytes(), "refused to load")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    cases["foreign"] = ((tmp_path / "foreign.pt").read_bytes(), "not an fxbench checkpoint")
    cases["truncated"] = (good[: len(good) // 3], "not a readable checkpoint")
    for name, (data, fragment) in cases.items():
        run = copy_run(trained, tmp_path / f"run-{name.replace(' ', '-')}")
        shutil.rmtree(run / "predictions", ignore_errors=True)
        (run / "checkpoints" / "best.pt").write_bytes(data)
        code, _, err = cli(["eval", run, "--split", "val"], capfd)
        assert code == 1 and fragment in error_line(err), (name, err)
        assert not (run / "metrics").exists() and not (run / "predictions").exists()
        code, _, err = cli(["predict", run, tmp_path / "evil.pt", "--out", tmp_path / f"pred-{name}"], capfd)
        assert code == 1 and fragment in error_line(err), (name, err)
    # A warm start from a stranger's file: refused before any training, nothing run.
    code, _, err = cli(["train", "--run-dir", tmp_path / "warm", "--init-checkpoint", tmp_path / "evil.pt",
                        *set_args(tiny_sets(easy))], capfd)
    assert code == 1 and "refused to load" in error_line(err)
    assert not (tmp_path / "warm" / "checkpoints").exists()
    assert not marker.exists()


def test_not_a_run_and_resume_errors(trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["eval", tmp_path / "empty", "--split", "val"], capfd)
    assert code == 3 and "is not an fxbench run" in err
    # A finished run has nothing to resume.
    run = copy_run(trained, tmp_path / "finished")
    before = {p: sha(p) for p in run.rglob("*") if p.is_file()}
    code, _, err = cli(["train", "--resume", run], capfd)
    assert code == 1 and "already finished" in error_line(err)
    assert read_json(run / "run.json")["status"] == "finished"
    assert {p: sha(p) for p in run.rglob("*") if p.is_file() and p.name != "run.json"} == {
        p: h for p, h in before.items() if p.name != "run.json"}
    # No last.pt (a run stopped before its first checkpoint): a clear error, not a stack trace.
    (run / "checkpoints" / "last.pt").unlink()
    code, _, err = cli(["train", "--resume", run], capfd)
    assert code == 1 and "no checkpoints/last.pt to resume from" in error_line(err)


def test_fresh_start_never_overwrites_a_run(trained: Path, tmp_path: Path, easy: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained, tmp_path / "existing")
    before = {p: sha(p) for p in run.rglob("*") if p.is_file()}
    code, _, err = cli(["train", "--run-dir", run, *set_args(tiny_sets(easy))], capfd)
    assert code == 2 and "already holds a run" in error_line(err) and "--resume" in error_line(err)
    assert {p: sha(p) for p in run.rglob("*") if p.is_file()} == before


# ============================================================================ SIGTERM / SIGINT, lock


SIGNAL_SETS = {"train.epochs": 3, "train.max_steps_per_epoch": 15, "sampler.epoch_size": 120}


def _signal_at_first_checkpoint(targets: list[tuple[subprocess.Popen[str], Path, int]]) -> None:
    """Send each process its signal as soon as its run's first last.pt exists (end of epoch 1),
    so the signal lands while epoch 2 trains."""
    pending = list(targets)
    end = time.monotonic() + TIMEOUT
    while pending:
        if time.monotonic() > end:  # a hang guard, not a speed check
            pytest.fail("timed out waiting for the first checkpoints")
        for item in list(pending):
            proc, run, sig = item
            assert proc.poll() is None, f"{run.name} ended before its signal: {proc.communicate()[1][-2000:]}"
            if (run / "checkpoints" / "last.pt").is_file():
                proc.send_signal(sig)
                pending.remove(item)
        time.sleep(0.005)


def _check_interrupted(proc: subprocess.Popen[str], run: Path) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"resume with: fxbench train --resume {run}" in err
    assert read_json(run / "run.json")["status"] == "interrupted"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] >= 2 and ckpt["config_sha256"] == read_json(run / "run.json")["config_sha256"]
    assert not (run / ".lock").exists()
    assert assert_run_folder_consistent(run) == []


def _resume_and_check(run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", "--resume", run], capfd)
    assert code == 0, err
    info = read_json(run / "run.json")
    assert info["status"] == "finished" and info["epochs_done"] == 3
    assert [int(r["epoch"]) for r in history_rows(run)] == [1, 2, 3]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4


def test_second_writer_refused_sigterm_sigint_then_resume(easy: Path, tmp_path: Path, procs: list[Any],
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """Two `fxbench train --run-dir SAME` at the same moment: one is refused. The other gets
    SIGTERM mid-run, a third run SIGINT; both stop with exit 130 and resume to the end."""
    term, intr = tmp_path / "term", tmp_path / "int"
    args = ["train", "--quiet", *set_args(tiny_sets(easy, **SIGNAL_SETS))]
    procs += [spawn([*args, "--run-dir", term]), spawn([*args, "--run-dir", term]), spawn([*args, "--run-dir", intr])]
    pair, other = procs[:2], procs[2]
    wait_until(lambda: any(p.poll() is not None for p in pair), "one of the two writers to give up", [other])
    loser = next(p for p in pair if p.poll() is not None)
    winner = next(p for p in pair if p is not loser)
    _, err = loser.communicate(timeout=TIMEOUT)
    assert loser.returncode == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"is in use by process {winner.pid}" in lines[0], err
    # A third writer (in-process) while the winner trains: refused the same way, nothing touched.
    wait_until(lambda: (term / "run.json").is_file(), "run.json", [winner])
    code, _, err = cli(["train", "--run-dir", term, *set_args(tiny_sets(easy, **SIGNAL_SETS))], capfd)
    assert code == 1 and f"is in use by process {winner.pid}" in error_line(err)

    _signal_at_first_checkpoint([(winner, term, signal.SIGTERM), (other, intr, signal.SIGINT)])
    assert "130 interrupted" in HELP.replace("\n", " ")  # the exit code below is documented
    _check_interrupted(winner, term)
    _check_interrupted(other, intr)
    # Someone edits the run's config before resuming: refused, the run is left as it was.
    tampered = copy_run(intr, tmp_path / "tampered")
    cfg_path = tampered / "config.resolved.yaml"
    text = cfg_path.read_text()
    assert "lr: 0.003" in text
    cfg_path.write_text(text.replace("lr: 0.003", "lr: 0.01"))
    last = sha(tampered / "checkpoints" / "last.pt")
    code, _, err = cli(["train", "--resume", tampered], capfd)
    assert code == 1 and "config changed" in error_line(err)
    assert sha(tampered / "checkpoints" / "last.pt") == last
    _resume_and_check(term, capfd)
    _resume_and_check(intr, capfd)


def test_signal_during_setup_still_ends_resumable(easy: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while the trainer loads its data (before run.json, before any step) is caught:
    the run stops at its first step with a resumable last.pt and resumes to the end."""
    import fxbench.train.loop as loop_mod

    real = loop_mod.check_selection_metric  # called in the middle of the set-up

    def and_ctrl_c(*args: Any) -> None:
        real(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop_mod, "check_selection_metric", and_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    cfg = tiny_cfg(easy, **{"train.epochs": 2})
    assert Trainer(cfg, run).run()["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["next_step"]) == (1, 0)
    assert read_json(run / "run.json")["status"] == "interrupted"
    monkeypatch.undo()
    assert Trainer(cfg, run, resume=True).run()["status"] == "finished"
    assert [int(r["epoch"]) for r in history_rows(run)] == [1, 2]


# ============================================================================ kill -9


KILL_SETS = {"train.epochs": 5, "train.max_steps_per_epoch": 10, "sampler.epoch_size": 80}


def _writing(run: Path) -> bool:
    """A checkpoint is being written right now (its temporary file exists)."""
    return any((run / "checkpoints").glob(".*.tmp"))


def test_kill9_at_random_moments_never_corrupts(easy: Path, tmp_path: Path, procs: list[Any],
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """Three trainings killed with SIGKILL: early in epoch 1, in the middle of a checkpoint write
    (as soon as its temporary file is seen), and at a random moment later on."""
    rng = random.Random(8)
    # (condition that arms the kill, delay range in seconds after it)
    plans: list[tuple[Callable[[Path], bool], float, float]] = [
        (lambda run: (run / "run.json").is_file(), 0.0, 0.3),
        (_writing, 0.0, 0.0),
        (lambda run: (run / "checkpoints" / "last.pt").is_file(), 0.3, 1.2),
    ]
    runs = [tmp_path / f"kill{i}" for i in range(len(plans))]
    for run in runs:
        procs.append(spawn(["train", "--run-dir", run, "--quiet", *set_args(tiny_sets(easy, **KILL_SETS))]))
    when: list[float | None] = [None] * len(plans)
    killed = [False] * len(plans)
    end = time.monotonic() + TIMEOUT
    while not all(killed):
        if time.monotonic() > end:  # a hang guard, not a speed check
            pytest.fail("timed out before the kills")
        for i, ((armed, lo, hi), run, proc) in enumerate(zip(plans, runs, procs, strict=True)):
            if killed[i]:
                continue
            if when[i] is None and armed(run):
                when[i] = time.monotonic() + rng.uniform(lo, hi)
            if when[i] is not None and time.monotonic() >= when[i]:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=TIMEOUT)  # reaped: its pid is really gone
                assert proc.returncode == -signal.SIGKILL, f"run {i} ended before its kill"
                killed[i] = True
            elif proc.poll() is not None:
                pytest.fail(f"run {i} ended before its kill: {proc.communicate()[1][-2000:]}")
        time.sleep(0.001)
    for run in runs:
        assert_run_folder_consistent(run)
        assert read_json(run / "run.json")["status"] == "running"  # it never got to say otherwise
    code, out, _ = cli(["show", runs[1], "--json"], capfd)
    assert code == 0 and json.loads(out)["status"] == "interrupted"  # dead lock holder detected
    late = runs[2]
    assert (late / "checkpoints" / "last.pt").is_file()
    # A fresh start in the killed folder would overwrite it: refused, nothing changed.
    last = sha(late / "checkpoints" / "last.pt")
    code, _, err = cli(["train", "--run-dir", late, *set_args(tiny_sets(easy, **KILL_SETS))], capfd)
    assert code == 2 and "already holds a run" in error_line(err)
    assert sha(late / "checkpoints" / "last.pt") == last
    # Leftovers of writes cut short (as a kill mid-save leaves them) are never read; the next
    # lock holder deletes the trainer's own (a partial checkpoint can be large), not others'.
    planted = [late / "checkpoints" / ".last.pt.dead1234.tmp", late / "checkpoints" / ".best.pt.dead5678.tmp",
               late / ".history.csv.dead9012.tmp"]
    foreign = late / ".decision.json.inflight.tmp"  # e.g. a `fxbench tune` writing right now
    for path in [*planted, foreign]:
        path.write_bytes(b"half a file")
    code, _, err = cli(["train", "--resume", late], capfd)  # takes over the dead process's lock
    assert code == 0, err
    assert read_json(late / "run.json")["status"] == "finished"
    assert len(history_rows(late)) == KILL_SETS["train.epochs"]
    assert not any(p.exists() for p in planted) and foreign.read_bytes() == b"half a file"
    foreign.unlink()
    assert assert_run_folder_consistent(late) == []
    code, _, err = cli(["eval", late, "--split", "val", "--which", "last"], capfd)
    assert code == 0, err


# ============================================================================ full disk


def _dev_full_tmp(monkeypatch: pytest.MonkeyPatch, prefix: str, on_call: int = 1,
                  before: Callable[[], None] | None = None) -> None:
    """Make the ``on_call``-th temporary file whose name starts with ``prefix`` a symlink to
    /dev/full: writes to it fail in the kernel with ENOSPC, exactly like a full disk."""
    real = tempfile.mkstemp
    seen = {"n": 0}

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        if Path(name).name.startswith(prefix):
            seen["n"] += 1
            if seen["n"] == on_call:
                if before is not None:
                    before()
                os.close(fd)
                os.unlink(name)
                os.symlink("/dev/full", name)
                fd = os.open(name, os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_disk_full_patched_torch_save_keeps_previous_checkpoint(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
    before = path.read_bytes()

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod.torch, "save", full)
    with pytest.raises(FxbenchError, match="disk full while writing") as err:
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    assert "previous file is intact" in str(err.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.pt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("writer", ["checkpoint", "json", "csv"])
def test_real_enospc_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    write: dict[str, Callable[[Path, int], None]] = {
        "checkpoint": lambda p, v: save_checkpoint(p, {"model": {"w": torch.full((5000,), float(v))}}),
        "json": lambda p, v: write_json_atomic(p, {"v": v, "pad": "x" * 20000}),
        "csv": lambda p, v: write_csv_atomic(p, [{"a": v, "b": "y" * 20000}], ["a", "b"]),
    }[writer]
    path = tmp_path / "file.out"
    write(path, 1)
    before = path.read_bytes()
    _dev_full_tmp(monkeypatch, ".file.out.")
    with pytest.raises(FxbenchError, match="disk full while writing"):
        write(path, 2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["file.out"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_during_training(easy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    snapshot: dict[str, bytes] = {}
    # The second last.pt write (end of epoch 2) hits a full disk; keep epoch 1's bytes to compare.
    _dev_full_tmp(monkeypatch, ".last.pt.", on_call=2, before=lambda: snapshot.setdefault("last", last.read_bytes()))
    code, _, err = cli(["train", "--run-dir", run, "--quiet", *set_args(tiny_sets(easy, **{"train.epochs": 3}))], capfd)
    assert code == 1 and error_line(err).startswith(f"error: disk full while writing {last}"), err
    assert last.read_bytes() == snapshot["last"] and load_checkpoint(last)["epoch"] == 2
    assert read_json(run / "run.json")["status"] == "failed"
    assert assert_run_folder_consistent(run) == []


# ============================================================================ numerics


def test_all_negative_batch_has_zero_dice_term(easy: Path) -> None:
    from fxbench.train.losses import SegmentationLoss

    cfg = tiny_cfg(easy)
    loss_fn = SegmentationLoss(cfg.loss)
    logits = torch.randn(4, 1, 32, 32, requires_grad=True)
    masks = torch.zeros(4, 1, 32, 32)
    loss, parts = loss_fn(logits, masks, torch.randn(4, requires_grad=True), epoch=1)
    assert torch.isfinite(loss) and parts["dice"] == 0.0 and parts["bce"] > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.fixture(scope="module")
def no_positive_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The easy data with every fractured val image moved to train: val has no positive."""
    prep = make_easy_prepared(tmp_path_factory.mktemp("nopos"), n=48, size=64)
    with open(prep / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    moved = 0
    for r in rows:
        if r["split"] == "val" and r["label"] == "1":
            r["split"], moved = "train", moved + 1
    assert moved > 0 and any(r["split"] == "val" for r in rows)
    with open(prep / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return prep


def test_val_without_positives(no_positive_val: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # dice_pos can never be computed on this val: refused before training (it used to train to the
    # end and never keep a best.pt).
    code, _, err = cli(["train", "--run-dir", tmp_path / "a", *set_args(tiny_sets(no_positive_val))], capfd)
    assert code == 2 and "train.selection_metric=dice_pos is undefined (NaN)" in error_line(err)
    assert "neg_loss" in error_line(err) and not (tmp_path / "a" / "run.json").exists()
    # With a selection metric the split defines, training works and the metrics say why they are NaN.
    run = tmp_path / "b"
    sets = tiny_sets(no_positive_val, **{"train.selection_metric": "neg_loss"})
    code, _, err = cli(["train", "--run-dir", run, "--quiet", *set_args(sets)], capfd)
    assert code == 0, err
    assert history_rows(run)[0]["val_dice_pos"] == "nan"
    code, out, err = cli(["eval", run, "--split", "val", "--json"], capfd)
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[0])
    assert metrics["dice_pos"] is None or np.isnan(metrics["dice_pos"])
    assert metrics["roc_auc_presence"] is None or np.isnan(metrics["roc_auc_presence"])
    stored = read_json(run / "metrics" / "val.json")
    assert stored["dice_pos"] is None and stored["roc_auc_presence"] is None
    notes = json.dumps(stored)
    assert "no image with a non-empty ground truth" in notes and "no positive image" in notes


# ============================================================================ config fuzzing


KEYS = all_keys()


def _typos(key: str) -> list[str]:
    last = key.split(".")[-1]
    return [key[:-1], key + "s", key.replace(".", "_"), key.upper(), "." + key, key + ".", key.replace(".", "..", 1),
            last, "nosuch." + key, key + ".deeper", key.replace("_", "-")]


key_st = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).flatmap(lambda k: st.sampled_from(_typos(k))),
    st.text(max_size=15),
)
value_text_st = st.one_of(
    st.text(max_size=25),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.floats().map(repr),
    st.sampled_from(["true", "false", "null", "~", "", "[1, 2]", "[8, 16, 32]", "{a: 1}", "1e-3", "-1", "0",
                     "inf", "-.inf", ".nan", "nan", "0.9,0.999", "[0.9, 0.999]", "'", '"', "[", "{", "a: b: c",
                     "!!python/object/apply:os.system ['true']", "&a [*a]", "unet", "cpu", "cosine", "hv"]),
)
override_st = st.one_of(st.builds(lambda k, v: f"{k}={v}", key_st, value_text_st), st.text(max_size=30))
json_value_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _tree(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in pairs:
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return tree


tree_st = st.lists(st.tuples(key_st, json_value_st), max_size=6).map(_tree)


def _valid_or_clean(make: Callable[[], Config]) -> Config | None:
    """The property: a usable Config (round-trips through its own YAML) or one ConfigError line."""
    try:
        cfg = make()
    except ConfigError as err:
        assert str(err).strip(), "empty error"
        return None
    assert isinstance(cfg, Config)
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.sha256() == cfg.sha256()
    return cfg


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None)
@given(overrides=st.lists(override_st, max_size=4),
       env=st.dictionaries(key_st.map(lambda k: "FXBENCH_" + k.upper().replace(".", "__")), value_text_st, max_size=2))
def test_any_overrides_give_a_config_or_a_config_error(overrides: list[str], env: dict[str, str]) -> None:
    _valid_or_clean(lambda: load_config(None, overrides, environ=env))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=tree_st)
def test_any_config_mapping_gives_a_config_or_a_config_error(tree: dict[str, Any], fuzz_dir: Path) -> None:
    _valid_or_clean(lambda: config_from_dict(tree))
    path = fuzz_dir / "tree.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    _valid_or_clean(lambda: load_config(path, [], environ={}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), tree_st.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
                      st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       raw=st.binary(max_size=64))
def test_any_yaml_file_gives_a_config_or_a_config_error(text: str, raw: bytes, fuzz_dir: Path) -> None:
    path = fuzz_dir / "text.yaml"
    path.write_text(text, encoding="utf-8")
    _valid_or_clean(lambda: load_config(path, [], environ={}))
    path.write_bytes(raw)  # not necessarily UTF-8 (a UTF-16 file from Notepad, a binary by mistake)
    _valid_or_clean(lambda: load_config(path, [], environ={}))


def test_config_edge_cases(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil, [], environ={})
    with pytest.raises(ConfigError):
        load_config(None, [f"optim.lr=!!python/object/apply:os.system ['touch {marker}']"], environ={})
    assert not marker.exists()
    for bad in ("optim.lr=inf", "optim.lr=.nan", "eval.threshold=nan", "loss.pos_weight=.inf"):
        with pytest.raises(ConfigError):
            load_config(None, [bad], environ={})
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("train:\n  epochs: 3\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(utf16, [], environ={})
    code, _, err = cli(["config", "validate", utf16], capfd)
    assert code == 2
    code, _, err = cli(["train", "--set", "train.epoch=3"], capfd)
    assert code == 2 and "did you mean 'train.epochs'" in error_line(err)


# ============================================================================ odd images for predict


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    from PIL import Image

    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # signature, then length(4) type(4) data(13) crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13: ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def make_odd_images(folder: Path) -> tuple[set[str], set[str]]:
    """Write a folder of odd inputs; returns (readable names, unreadable names)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    grey = rng.integers(0, 255, (60, 80), dtype=np.uint8)
    rgb = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "grey.png")
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    Image.fromarray(np.dstack([rgb, grey])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", format="JPEG")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    Image.fromarray(grey).convert("LA").save(folder / "grey_alpha.png")
    Image.fromarray(grey > 127).save(folder / "bilevel.png")
    fl = grey.astype(np.float32)
    fl[0, 0] = np.nan
    Image.fromarray(fl, mode="F").save(folder / "float_nan.tif")
    Image.fromarray(grey[:1, :1]).save(folder / "one_pixel.png")
    Image.fromarray(rng.integers(0, 255, (3, 400), dtype=np.uint8)).save(folder / "thin.png")
    Image.fromarray(grey).save(folder / "same_stem.png")
    Image.fromarray(grey.T.copy()).save(folder / "same_stem.jpg", format="JPEG")
    (folder / "png_named.jpg").write_bytes((folder / "grey.png").read_bytes())
    (folder / "sub").mkdir()
    Image.fromarray(grey).save(folder / "sub" / "grey.png")
    readable = {"grey.png", "truncated.jpg", "sixteen_bit.png", "rgba.png", "cmyk.jpg", "palette.png",
                "grey_alpha.png", "bilevel.png", "float_nan.tif", "one_pixel.png", "thin.png", "same_stem.png",
                "same_stem.jpg", "png_named.jpg", "sub/grey.png"}
    (folder / "zero_bytes.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file, not an image\n")
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (folder / "bomb.png").write_bytes(_png_with_size(40000, 40000))
    unreadable = {"zero_bytes.png", "text.png", "garbage.jpg", "bomb.png"}
    (folder / "notes.txt").write_text("not an image suffix: ignored\n")
    (folder / ".hidden.png").write_bytes(b"")
    return readable, unreadable


def test_predict_reads_odd_images_and_lists_unreadable_ones(trained: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    folder = tmp_path / "in"
    readable, unreadable = make_odd_images(folder)
    out = tmp_path / "out"
    code, _, err = cli(["predict", trained, folder, "--out", out, "--device", "cpu"], capfd)
    assert code == 0, err
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out / "errors.csv", newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert {Path(r["file"]).relative_to(folder).as_posix() for r in rows} == readable
    assert {Path(e["file"]).relative_to(folder).as_posix() for e in errors} == unreadable
    assert all(e["error"] and "\n" not in e["error"] for e in errors)
    assert f"{len(unreadable)} unreadable files listed in {out}/errors.csv" in err
    # One mask and one overlay per readable image (same stems must not overwrite each other),
    # each at the image's native size.
    masks = sorted((out / "masks").iterdir())
    assert len(masks) == len(readable) and len(list((out / "overlays").iterdir())) == len(readable)
    sizes = {(int(r["width"]), int(r["height"])) for r in rows}
    assert {Image.open(m).size for m in masks} == sizes
    assert {(1, 1), (400, 3), (80, 60), (60, 80)} <= sizes
    assert all(0.0 <= float(r["presence_probability"]) <= 1.0 for r in rows)
    # Nothing but unreadable files: a data error (exit 3) and nothing written (issue #14).
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in unreadable:
        shutil.copy(folder / name, bad / name)
    code, _, err = cli(["predict", trained, bad, "--out", tmp_path / "out2", "--device", "cpu"], capfd)
    assert code == 3 and f"none of the {len(unreadable)} input files" in error_line(err)
    assert not (tmp_path / "out2").exists()
    # A missing input is a data error (exit 3), an empty folder too.
    code, _, err = cli(["predict", trained, tmp_path / "nope.png", "--out", tmp_path / "out3"], capfd)
    assert code == 3 and "input not found" in error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["predict", trained, tmp_path / "empty", "--out", tmp_path / "out4"], capfd)
    assert code == 3 and "no image files" in error_line(err)


def test_ctrl_c_during_predict_leaves_only_whole_files(trained: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    import fxbench.predict.images as images_mod

    folder = tmp_path / "in"
    make_odd_images(folder)
    real, calls = images_mod.read_grey, {"n": 0}

    def interrupted(path: Path) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(images_mod, "read_grey", interrupted)
    out = tmp_path / "out"
    code, _, err = cli(["predict", trained, folder, "--out", out, "--device", "cpu"], capfd)
    assert code == 130 and error_line(err) == "error: interrupted"
    assert not (out / "predictions.csv").exists() and not (out / "errors.csv").exists()
    for png in [*out.glob("masks/*"), *out.glob("overlays/*")]:
        assert not png.name.endswith(".tmp")
        Image.open(png).load()  # whole files only
