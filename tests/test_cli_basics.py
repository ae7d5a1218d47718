"""The everyday CLI: help, version, config verbs, completion, doctor, runs, show, models.

Most tests run the app in-process with CliRunner. A few run the installed console script in
a subprocess, because that is the only place where the real entry point (standalone_mode=False
exit codes) and the shell-completion protocol can be checked; they are kept few (~0.2 s each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fxbench import __version__
from fxbench import doctor as doctor_mod
from fxbench import runs as runs_mod
from fxbench.cli.app import app, main
from fxbench.cli.config_cmd import complete_set_key
from fxbench.doctor import Check
from fxbench.runs import complete_run_dir, headline_metrics

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted([*REPO.glob("examples/*.yaml"), *REPO.glob("examples/*.yml")])
SCRIPT = Path(sys.executable).with_name("fxbench")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A CliRunner with no FXBENCH_* config variables leaking in from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("FXBENCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "home"))
    return CliRunner()


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FXBENCH_", "_FXBENCH_"))}
    env.update(extra)
    return env


def _run_script(args: list[str], cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.is_file():
        pytest.skip(f"console script not installed next to {sys.executable} (pip install -e .)")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=_script_env(**env))


# ====================================================================== help, version, speed


def test_help_lists_verbs_and_imports_no_torch() -> None:
    # A fresh interpreter: the test process itself has torch loaded by other tests.
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from fxbench.cli.app import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(["--help"])
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "skimage", "matplotlib") if m in sys.modules)
        print(buf.getvalue())
        print("HEAVY=" + ",".join(heavy))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_script_env())
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout.splitlines()[-1]
    for verb in ("config", "doctor", "runs", "show", "models"):
        assert f"  {verb} " in proc.stdout


def _fresh_modules(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, output, heavy modules loaded) of ``fxbench ARGV`` in a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from fxbench.cli.app import main
        buf = io.StringIO()
        rc = 0
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                main({argv!r})
            except SystemExit as exc:
                rc = exc.code or 0
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "skimage", "matplotlib") if m in sys.modules)
        print(buf.getvalue())
        print("RC=" + str(rc))
        print("HEAVY=" + ",".join(heavy))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_script_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip().splitlines()
    heavy = lines[-1].removeprefix("HEAVY=")
    return int(lines[-2].removeprefix("RC=")), "\n".join(lines[:-2]), [m for m in heavy.split(",") if m]


def test_version_shows_fxbench_without_importing_torch(runner: CliRunner) -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0
        assert result.stdout.strip() == f"fxbench {__version__}"
    rc, output, heavy = _fresh_modules(["--version"])
    assert rc == 0 and output.startswith(f"fxbench {__version__}") and heavy == []


def test_a_config_key_typo_fails_before_torch_loads() -> None:
    rc, output, heavy = _fresh_modules(["train", "--set", "optim.lrr=1e-3"])
    assert rc == 2 and "optim.lrr" in output and "optim.lr" in output  # did-you-mean
    assert "torch" not in heavy, heavy


# ====================================================================== config verbs


def test_config_show_validate_keys(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "optim.lr=1e-3", "--set", "augment.enabled=false"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["optim"]["lr"] == 0.001 and isinstance(shown["optim"]["lr"], float)
    assert shown["augment"]["enabled"] is False
    assert shown["train"]["epochs"] == 20

    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 3\n")
    result = runner.invoke(app, ["config", "validate", str(good)])
    assert result.exit_code == 0 and "is a valid fxbench config" in result.output

    result = runner.invoke(app, ["config", "keys"])
    keys = result.stdout.split()
    assert result.exit_code == 0 and "optim.lr" in keys and "sampler.patch.size" in keys


def test_set_typo_exits_2_with_suggestion(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "optim.lrr=0.1"])
    assert result.exit_code == 2
    assert "error: --set optim.lrr: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["config", "show", "--set", "optim.lr=-1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --set optim.lr: Input should be greater than 0"


def test_precedence_env_set_file_default(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 5\n")

    def epochs(args: list[str], env: dict[str, str] | None = None) -> int:
        result = runner.invoke(app, ["config", "show", *args], env=env)
        assert result.exit_code == 0, result.output
        return int(yaml.safe_load(result.stdout)["train"]["epochs"])

    env = {"FXBENCH_TRAIN__EPOCHS": "7"}
    assert epochs([]) == 20
    assert epochs(["--config", str(cfg)]) == 5
    assert epochs(["--config", str(cfg)], env) == 7
    assert epochs(["--config", str(cfg), "--set", "train.epochs=9"], env) == 9


@pytest.mark.parametrize("example", EXAMPLES or [None], ids=lambda p: p.name if p else "none")
def test_every_example_validates(runner: CliRunner, example: Path | None) -> None:
    if example is None:
        pytest.skip("examples/ has no YAML yet")
    result = runner.invoke(app, ["config", "validate", str(example)])
    assert result.exit_code == 0, result.output


def test_examples_exist() -> None:
    if not (REPO / "examples").is_dir() or not any((REPO / "examples").iterdir()):
        pytest.skip("examples/ is empty for now")
    assert len(EXAMPLES) >= 1


# ====================================================================== exit codes (real entry point)


def test_console_script_exit_codes(tmp_path: Path) -> None:
    proc = _run_script(["no-such-verb"])
    assert proc.returncode == 2 and "No such command 'no-such-verb'" in proc.stderr
    proc = _run_script(["config", "validate", str(tmp_path / "missing.yaml")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'} (check the path, or run `fxbench config show` for defaults)"


def test_in_process_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(app, ["no-such-verb"]).exit_code == 2
    assert runner.invoke(app, ["config", "validate"]).exit_code == 2  # missing argument
    assert runner.invoke(app, ["show", str(tmp_path / "nope")]).exit_code == 2
    assert runner.invoke(app, ["runs", str(tmp_path / "nope")]).exit_code == 2


# ====================================================================== completion


def test_set_completer_returns_schema_keys() -> None:
    optim = complete_set_key("optim.")
    assert "optim.lr=" in optim and "optim.betas=" in optim
    assert all(k.startswith("optim.") and k.endswith("=") for k in optim)
    assert complete_set_key("sampler.patch.si") == ["sampler.patch.size="]
    assert complete_set_key("zzz") == []


def test_completion_protocol_for_set_keys_and_run_dirs(tmp_path: Path) -> None:
    # Typer 0.29 bash protocol: _FXBENCH_COMPLETE=complete_bash, COMP_WORDS, COMP_CWORD.
    proc = _run_script([], _FXBENCH_COMPLETE="complete_bash",
                       COMP_WORDS="fxbench config show --set optim.", COMP_CWORD="4")
    assert proc.returncode == 0, proc.stderr
    assert "optim.lr=" in proc.stdout.split() and "train.epochs=" not in proc.stdout

    _make_run(tmp_path / "runs" / "exp-a")
    proc = _run_script([], cwd=tmp_path, _FXBENCH_COMPLETE="complete_bash",
                       COMP_WORDS="fxbench show runs/", COMP_CWORD="2")
    assert proc.stdout.split() == ["runs/exp-a"]


def test_show_completion_for_a_named_shell() -> None:
    proc = _run_script(["--show-completion", "bash"])
    assert proc.returncode == 0, proc.stderr
    assert "_fxbench_completion()" in proc.stdout and "_FXBENCH_COMPLETE=complete_bash" in proc.stdout


def test_named_shell_is_honoured_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--show-completion", "zsh"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("#compdef fxbench")
    with pytest.raises(SystemExit) as exc:
        main(["--show-completion=tcsh"])
    assert exc.value.code == 2 and "unknown shell 'tcsh'" in capsys.readouterr().err
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["--install-completion", "bash"])
    assert exc.value.code == 0
    assert "_FXBENCH_COMPLETE=complete_bash" in (tmp_path / ".bash_completions" / "fxbench.sh").read_text()


# ====================================================================== doctor


def test_doctor_on_cpu(runner: CliRunner) -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True and report["counts"]["fail"] == 0
    for name in ("python", "torch", "CUDA", "numerics cpu", "data home", "free disk", "pydicom",
                 "scikit-learn", "matplotlib", "HF_HUB_OFFLINE"):
        assert name in checks, name
    assert checks["numerics cpu"]["status"] == "ok"
    assert checks["data home"]["value"].startswith(os.environ["FXBENCH_HOME"])

    result = runner.invoke(app, ["doctor"], env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0
    assert "numerics cpu" in result.stdout and "HF_HUB_OFFLINE" in result.stdout
    assert " 0 fail" in result.stdout.splitlines()[-1]
    assert "model.weights=PATH" in result.stdout


def test_doctor_fails_with_advice(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_mod, "_package_checks",
                        lambda: [Check("timm", "fail", "not installed", "pip install timm")])
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "pip install timm" in result.stdout
    assert result.stderr.strip() == "error: doctor: 1 check(s) failed: timm (see the advice above)"


def test_doctor_numerics_failure_is_caught() -> None:
    check = doctor_mod._numerics_check("meta")  # computes nothing real: .cpu() cannot copy
    assert check.status == "fail" and check.name == "numerics meta"


def test_doctor_cuda_branch_with_a_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import torch

    props = types.SimpleNamespace(name="Fake GPU", total_memory=80 * 1024**3, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 * 1024**3, 80 * 1024**3))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (7, 5))  # pre-Ampere: no native bf16
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(doctor_mod, "_numerics_check", lambda d: Check(f"numerics {d}", "ok", "fine"))
    checks = {c.name: c for c in doctor_mod._torch_checks()}
    assert checks["GPU cuda:0"].value == "Fake GPU, 80.0 GiB (70.0 GiB free), compute 7.5"
    assert checks["cuDNN"].value == "91000"
    assert (checks["bf16 cuda:0"].status, checks["bf16 cuda:0"].value) == ("info", "not native on compute 7.5")
    assert {"numerics cpu", "numerics cuda:0"} <= set(checks)


# ====================================================================== runs and show


def _make_run(run: Path, *, status: str | None = "finished", epochs: int = 3, best: float | None = 0.4123,
              history_best: bool = False, lock_pid: int | None = None) -> Path:
    """A hand-made run folder in the documented layout (internals.md, Run folder)."""
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({
        "model": {"name": "unet_dual"}, "data": {"image_size": 256},
        "train": {"epochs": 20, "seed": 7, "batch_size": 4, "selection_metric": "dice_pos"},
        "optim": {"lr": 0.0003}, "schedule": {"name": "cosine"},
    }))
    rows = ["epoch,train_loss,val_dice_pos,selection"]
    rows += [f"{i},0.5,{0.1 * i if history_best else ''},{0.1 * i}" for i in range(1, epochs + 1)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    if status is not None:
        body = {"status": status, "seed": 7, "selection_metric": "dice_pos"}
        if best is not None:
            body.update(best_score=best, best_epoch=2)
        (run / "run.json").write_text(json.dumps(body))
    if lock_pid is not None:
        (run / ".lock").write_text(str(lock_pid))
    return run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within a test is negligible)


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    a = _make_run(root / "exp-a")
    (a / "metrics").mkdir()
    (a / "metrics" / "val.json").write_text(json.dumps({
        "split": "val", "dice_pos": 0.4123, "dice_pos_ci95": [0.35, 0.47],
        "roc_auc_presence": 0.9, "roc_auc_presence_ci95": [0.85, 0.94], "iou_pos": 0.3,
        "subgroups": {"hand": {"dice_pos": 0.1}},
    }))
    (a / "metrics" / "test.json").write_text(json.dumps({"split": "test", "dice_pos": 0.39, "dice_pos_ci95": [0.3, 0.45]}))
    (a / "decision.json").write_text(json.dumps({"threshold": 0.35, "tta": "hv", "source": "tune", "val_predictions_sha256": "ab" * 32}))
    (a / "test_access.log").write_text('{"when": 1}\n{"when": 2}\n')
    (a / "checkpoints").mkdir()
    (a / "checkpoints" / "best.pt").write_bytes(b"x" * 10)
    _make_run(root / "sweep" / "seed_1", status="running", epochs=2, best=None, history_best=True, lock_pid=_dead_pid())
    (root / "notes").mkdir()  # not a run: no config, no run.json
    broken = root / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    return root


def test_runs_lists_statuses_epochs_best_and_test_accesses(runner: CliRunner, runs_root: Path) -> None:
    result = runner.invoke(app, ["runs", str(runs_root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert sorted(rows) == ["broken", "exp-a", "sweep/seed_1"]
    a = rows["exp-a"]
    assert (a["status"], a["epochs_done"], a["epochs_planned"], a["test_accesses"]) == ("finished", 3, 20, 2)
    assert (a["selection_metric"], a["best_value"], a["best_epoch"], a["model"]) == ("dice_pos", 0.4123, 2, "unet_dual")
    s = rows["sweep/seed_1"]
    assert s["status"] == "interrupted"  # says running, but its lock holder is gone
    assert (s["epochs_done"], s["best_value"], s["best_epoch"], s["test_accesses"]) == (2, 0.2, 2, 0)
    assert rows["broken"]["status"] == "unknown" and rows["broken"]["best_value"] is None

    # Human table; the root also comes from FXBENCH_RUNS.
    result = runner.invoke(app, ["runs"], env={"FXBENCH_RUNS": str(runs_root), "COLUMNS": "200"})
    assert result.exit_code == 0
    assert "best dice_pos" in result.stdout  # one selection metric for all: named in the header
    line = next(row for row in result.stdout.splitlines() if "exp-a" in row)
    assert [c.strip() for c in line.strip("│ ").split("│")] == ["exp-a", "finished", "unet_dual", "3/20", "0.4123 @2", "2"]
    assert "interrupted" in result.stdout


def test_runs_without_a_runs_folder(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs"], env={"FXBENCH_RUNS": str(tmp_path / "none")})
    assert result.exit_code == 0 and "no runs under" in result.stderr
    result = runner.invoke(app, ["runs", "--json"], env={"FXBENCH_RUNS": str(tmp_path / "none")})
    assert json.loads(result.stdout) == []


def test_show_summarises_a_run(runner: CliRunner, runs_root: Path) -> None:
    run = runs_root / "exp-a"
    result = runner.invoke(app, ["show", str(run), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["config"] == {"model": "unet_dual", "image_size": 256, "epochs": 20, "batch_size": 4,
                              "lr": 0.0003, "schedule": "cosine", "seed": 7, "selection_metric": "dice_pos"}
    assert info["status"] == "finished" and info["test_accesses"] == 2
    assert info["metrics"]["val"]["dice_pos"] == {"value": 0.4123, "ci_low": 0.35, "ci_high": 0.47}
    assert info["metrics"]["val"]["iou_pos"] == {"value": 0.3, "ci_low": None, "ci_high": None}
    assert info["metrics"]["test"]["dice_pos"] == {"value": 0.39, "ci_low": 0.3, "ci_high": 0.45}
    assert info["decision"]["threshold"] == 0.35
    paths = {Path(a["path"]).relative_to(run).as_posix(): a["bytes"] for a in info["artifacts"]}
    assert paths["checkpoints/best.pt"] == 10
    assert {"config.resolved.yaml", "run.json", "history.csv", "decision.json", "metrics/val.json"} <= set(paths)
    assert "checkpoints/last.pt" not in paths

    # Human output, and a bare run name resolved under $FXBENCH_RUNS.
    result = runner.invoke(app, ["show", "exp-a"], env={"FXBENCH_RUNS": str(runs_root), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "model=unet_dual" in result.stdout and "lr=0.0003" in result.stdout
    assert "[0.3500, 0.4700]" in result.stdout and "decision: threshold 0.35" in result.stdout
    assert "all fields in decision.json" in result.stdout and "val_predictions_sha256" not in result.stdout  # short line


def test_show_rejects_a_folder_that_is_not_a_run(runner: CliRunner, runs_root: Path) -> None:
    result = runner.invoke(app, ["show", str(runs_root / "notes")])
    assert result.exit_code == 2 and "is not a run folder" in result.stderr


def test_complete_run_dir(monkeypatch: pytest.MonkeyPatch, runs_root: Path) -> None:
    monkeypatch.setenv("FXBENCH_RUNS", str(runs_root))
    root = str(runs_root)
    # Only folders with config.resolved.yaml are offered ('broken' has only run.json).
    assert complete_run_dir("") == [f"{root}/exp-a", f"{root}/sweep/seed_1"]
    assert complete_run_dir(f"{root}/sw") == [f"{root}/sweep/seed_1"]
    assert complete_run_dir("exp") == ["exp-a"]  # a bare name, as `show` accepts
    assert complete_run_dir("zzz") == []


def test_headline_metrics_read_what_evaluate_writes() -> None:
    body = {"dice_pos": 0.5, "dice_pos_ci95": [0.4, 0.6], "iou_pos": 0.25, "roc_auc_presence": float("nan"),
            "roc_auc_presence_ci95": [0.1, 0.2], "lesion_recall": {"value": 0.7}}
    found = headline_metrics(body)
    assert found == {"dice_pos": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                     "iou_pos": {"value": 0.25, "ci_low": None, "ci_high": None}}
    # NaN has nothing to show; a shape fxbench never writes ({"value": ...}) is not guessed at.


def test_headline_metrics_of_a_real_metrics_file(tmp_path: Path) -> None:
    from fxbench.artifacts.predictions import Predictions
    from fxbench.evaluate import evaluate_predictions

    rng = np.random.default_rng(0)
    masks = np.zeros((12, 16, 16), np.uint8)
    masks[:6, 4:9, 4:9] = 1
    probs = np.clip(masks * 0.7 + rng.random(masks.shape) * 0.4, 0, 1)
    pred = Predictions(image_ids=[f"i{k}" for k in range(12)], probs=probs, masks=masks,
                       boxes=np.tile([0, 0, 16, 16], (12, 1)), native_hw=np.full((12, 2), 16),
                       labels=masks.reshape(12, -1).max(1), presence={"max": probs.reshape(12, -1).max(1)},
                       meta={"split": "val"})
    body = evaluate_predictions(pred, {"threshold": 0.5, "presence_source": "max", "presence_threshold": 0.5},
                                bootstrap=50)
    found = headline_metrics(json.loads(json.dumps(body)))
    assert found["dice_pos"]["value"] == pytest.approx(body["dice_pos"])
    assert [found["dice_pos"]["ci_low"], found["dice_pos"]["ci_high"]] == pytest.approx(body["dice_pos_ci95"])


# ====================================================================== models


def test_models_lists_registry_names(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import fxbench.models as registry

    monkeypatch.setattr(registry, "list_models", lambda: ["zeta_net", "unet_dual"])
    monkeypatch.setattr(registry, "model_descriptions", lambda: {"zeta_net": "a test model"})
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": "unet_dual", "description": "", "default": True},
        {"name": "zeta_net", "description": "a test model", "default": False},
    ]
    result = runner.invoke(app, ["models"])
    assert "unet_dual (default)" in result.stdout and "a test model" in result.stdout


def test_default_model_is_in_the_real_registry() -> None:
    from fxbench.config import ModelConfig
    from fxbench.models import list_models

    assert ModelConfig().name in list_models()


def test_running_status_follows_the_lock_holder(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "r", status="running")
    assert runs_mod.summarize_run(run).status == "running"  # no lock (yet): trust run.json
    (run / ".lock").write_text(str(_dead_pid()))
    assert runs_mod.summarize_run(run).status == "interrupted"
    (run / ".lock").write_text(str(os.getpid()))
    assert runs_mod.summarize_run(run).status == "running"  # holder alive


def test_doctor_flags_an_unwritable_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "a" / "b"))
    monkeypatch.setattr(doctor_mod.os, "access", lambda path, mode: False)
    home = {c.name: c for c in doctor_mod._disk_checks()}["data home"]
    assert home.status == "fail"
    assert home.value == f"{tmp_path / 'a' / 'b'} ($FXBENCH_HOME, not created yet)"
    assert home.advice == f"{tmp_path} is not writable: set FXBENCH_HOME to a writable folder"
