"""`python -m build` gives an sdist and a wheel that carry the package, its metadata and its command.

The checkout is copied to a temporary folder (the build never writes into the source tree) and
built without isolation, from the sdist, as `python -m build` does by default: so a file missing
from the sdist also goes missing from the wheel. The wheel is then unpacked with
``pip install --no-deps --target`` and run from there; torch and friends come from this
environment, so nothing is downloaded. Takes a few seconds.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fxbench

REPO = Path(__file__).resolve().parents[1]


def _source_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the checkout (what a clean clone has)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=REPO, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files are sources")
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def _setuptools_ok() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return False
    return major >= 77  # pyproject's build requirement (SPDX license field)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")  # both come with the `test` extra
    if not _setuptools_ok():
        pytest.skip("building without isolation needs setuptools>=77 in this environment")
    src = tmp_path_factory.mktemp("checkout")
    for rel in _source_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FXBENCH_")}
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_wheel_has_package_metadata_and_entry_point(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    assert wheel.name == f"fxbench-{fxbench.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"fxbench-{fxbench.__version__}.dist-info"
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    for rel in ("fxbench/__init__.py", "fxbench/_version.py", "fxbench/cli/app.py", "fxbench/py.typed",
                "fxbench/predict/new_images.py", "fxbench/data/cache.py", "fxbench/evaluate/metrics.py"):
        assert rel in names, rel
    # Every module of the source package is in the wheel (nothing forgotten by package discovery).
    src_modules = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "fxbench").rglob("*.py")}
    assert src_modules <= names, sorted(src_modules - names)
    assert not any(n.startswith(("tests/", "docs/", "examples/")) or "__pycache__" in n for n in names)
    assert meta["Name"] == "fxbench" and meta["Version"] == fxbench.__version__
    assert meta["License-Expression"] == "MIT"
    assert f"{info}/licenses/LICENSE" in names
    assert "pydicom>=2.4; extra == \"dicom\"" in meta.get_all("Requires-Dist")
    assert "[console_scripts]\nfxbench = fxbench.cli.app:main" in entry_points


def test_sdist_has_sources_docs_examples_and_tests(dist: Path) -> None:
    sdist = _one(dist, "*.tar.gz")
    root = f"fxbench-{fxbench.__version__}"
    assert sdist.name == f"{root}.tar.gz"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        pkg_info = email.message_from_bytes(tf.extractfile(f"{root}/PKG-INFO").read())  # type: ignore[union-attr]
    assert pkg_info["Version"] == fxbench.__version__
    for rel in ("pyproject.toml", "README.md", "LICENSE", "src/fxbench/cli/app.py", "docs/cli.md",
                "examples/ci_smoke.sh", "examples/dual_head_unet.yaml", "tests/test_packaging.py"):
        assert f"{root}/{rel}" in names, rel
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_installed_wheel_runs(dist: Path, tmp_path: Path) -> None:
    """The wheel unpacked on its own (dependencies from this environment) imports and answers."""
    wheel = _one(dist, "*.whl")
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FXBENCH_", "_FXBENCH_"))}
    env.update(PYTHONPATH=str(target), FXBENCH_FAST_VERSION="1")
    code = (
        "import importlib.metadata as m, fxbench, sys\n"
        f"dist = next(m.distributions(name='fxbench', path=[{str(target)!r}]))\n"
        "ep = next(e for e in dist.entry_points if e.group == 'console_scripts' and e.name == 'fxbench')\n"
        "main = ep.load()\n"
        "print(fxbench.__file__)\n"
        "print(dist.version)\n"
        "sys.stdout.flush()\n"
        "main(['--version'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, version, banner = proc.stdout.splitlines()[:3]
    assert Path(where).resolve().is_relative_to(target.resolve())  # the wheel's copy, not the checkout
    assert version == fxbench.__version__
    assert banner == f"fxbench {fxbench.__version__}"
    proc = subprocess.run([sys.executable, "-m", "fxbench", "--help"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for verb in ("prepare", "train", "eval", "tune", "predict", "report", "doctor"):
        assert f"  {verb} " in proc.stdout, verb
