"""Build what travels to the device machine, and check that it fits.

    python benchmarks/carry.py --archive /path/FracAtlas.zip     # .whl/ + .realcache/prepared/
    python benchmarks/carry.py --local-wheels --wheels-only       # offline: repack installed wheels

1. ``.whl/``: wheels of what the device's Python (3.12, torch 2.11) lacks, at the versions this
   environment runs (so the device tests what CI tests): pydantic, pydantic-core,
   annotated-types, typing-inspection, platformdirs; plus typing-extensions (pydantic needs
   >= 4.16) and typer (pyproject pins the 0.29 series; the device's own typer is another one).
   Default: ``pip download`` of cp312 manylinux x86_64 wheels (needs the package index).
   ``--local-wheels``: repack the distributions installed in *this* Python as wheels (offline;
   right for an emulation on this machine, not for the device when the Pythons differ).
2. ``.realcache/prepared/``: a compact real prepared folder for the best recipe's resolution
   (``examples/fxbench_best.yaml``: 384 px): ``fxbench prepare --split-mode seed --cache-size
   384 --cache-format jpeg --jpeg-quality 85`` into a full folder outside the repo
   (``--work``), then only manifest.csv, prepare_report.json, boxes.json and cache/384.npz are
   copied in (no native masks: eval scores at cache resolution, boxes from boxes.json).
3. The total that would travel: the tracked tree, untracked files git does not ignore, and the
   carried paths. Exit status 1 when it is above ``--limit-mib`` (60; the device takes 64).

Standard library only, apart from running fxbench (``python -m fxbench``) for the prepare.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Distributions the device's Python lacks, and those it has at another version than fxbench pins.
MISSING_ON_DEVICE = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "platformdirs")
WHEELS = (*MISSING_ON_DEVICE, "typing-extensions", "typer")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
COMPACT = ("manifest.csv", "prepare_report.json", "boxes.json")  # boxes.json: box metrics in eval
MIB = 2**20


def _installed(name: str) -> md.Distribution:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        raise SystemExit(f"error: {name} is not installed in {sys.executable}; install fxbench's dependencies") from None


def download_wheels(dest: Path) -> list[Path]:
    """``pip download`` the cp312 manylinux wheels of ``WHEELS`` at this environment's versions."""
    pins = [f"{name}=={_installed(name).version}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *pins]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_installed(name: str, dest: Path) -> Path:
    """Write the installed distribution ``name`` as a wheel (its RECORD's files + dist-info).

    Tagged for this interpreter (``py3-none-any`` for pure Python, else cpXY-cpXY-linux_x86_64):
    a faithful stand-in for the real wheel on this machine, without the network.
    """
    dist = _installed(name)
    files = [f for f in (dist.files or []) if not str(f).endswith(".pyc") and "__pycache__" not in str(f)]
    pure = not any(str(f).endswith((".so", ".pyd")) for f in files)
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    tag = "py3-none-any" if pure else f"{abi}-{abi}-linux_x86_64"
    norm = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    info_dir = f"{norm}-{dist.version}.dist-info"
    out = dest / f"{norm}-{dist.version}-{tag}.whl"
    record: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            rel = str(f)
            if rel.startswith("..") or ".dist-info/" in rel:
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            zf.writestr(rel, data)
            record.append((rel, _record_hash(data), str(len(data))))
        meta = {
            "METADATA": (dist.read_text("METADATA") or "").encode(),
            "WHEEL": f"Wheel-Version: 1.0\nGenerator: fxbench-carry\nRoot-Is-Purelib: {str(pure).lower()}\n"
                     f"Tag: {tag}\n".encode(),
        }
        for extra in ("entry_points.txt", "top_level.txt"):
            text = dist.read_text(extra)
            if text:
                meta[extra] = text.encode()
        for key, data in meta.items():
            zf.writestr(f"{info_dir}/{key}", data)
            record.append((f"{info_dir}/{key}", _record_hash(data), str(len(data))))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([*record, (f"{info_dir}/RECORD", "", "")])
        zf.writestr(f"{info_dir}/RECORD", buf.getvalue())
    return out


def build_wheels(dest: Path, local: bool) -> list[Path]:
    """A fresh ``dest`` with one wheel per name in ``WHEELS`` (two versions of one break pip)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if local:
        return [repack_installed(name, dest) for name in WHEELS]
    return download_wheels(dest)


def recipe_size(recipe: Path) -> int:
    """``data.image_size`` of a recipe YAML (the flow-style ``data: {image_size: N, ...}`` line)."""
    match = re.search(r"^data:.*\bimage_size:\s*(\d+)", recipe.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise SystemExit(f"error: no data.image_size in {recipe}")
    return int(match.group(1))


def build_real(archive: Path, work: Path, dest: Path, size: int, quality: int) -> None:
    """Prepare the real archive (seed split) into ``work`` and copy the compact part to ``dest``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "fxbench", "prepare", "--archive", str(archive), "--out", str(work), "--split-mode",
           "seed", "--cache-size", str(size), "--cache-format", "jpeg", "--jpeg-quality", str(quality)]
    subprocess.run(cmd, check=True, env=env)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "cache").mkdir(parents=True)
    for name in COMPACT:
        if (work / name).is_file():
            shutil.copy2(work / name, tmp / name)
    shutil.copy2(work / "cache" / f"{size}.npz", tmp / "cache" / f"{size}.npz")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _tree_bytes(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return total


def travel_bytes(root: Path, carried: list[Path]) -> dict[str, int]:
    """Bytes that travel: tracked files, untracked files git does not ignore, each carried path."""
    def listed(*args: str) -> list[Path]:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *args], check=True, capture_output=True).stdout
        return [root / p for p in out.decode().split("\0") if p]

    sizes = {"tracked": _tree_bytes(listed()), "untracked": _tree_bytes(listed("--others", "--exclude-standard"))}
    for path in carried:
        sizes[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = _tree_bytes([path])
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="FracAtlas zip (or folder): build .realcache/prepared from it")
    ap.add_argument("--recipe", type=Path, default=ROOT / "examples" / "fxbench_best.yaml")
    ap.add_argument("--size", type=int, help="cache edge in px (default: the recipe's data.image_size)")
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality of the cache (default 85)")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ap.add_argument("--work", type=Path, default=cache_home / "fxbench" / "carry-prepared",
                    help="full prepared folder, outside the repo (default: ~/.cache/fxbench/carry-prepared)")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    ap.add_argument("--local-wheels", action="store_true", help="repack installed distributions (offline)")
    ap.add_argument("--wheels-only", action="store_true", help="skip the real prepared folder")
    ap.add_argument("--no-wheels", action="store_true", help="keep .whl/ as it is")
    ap.add_argument("--limit-mib", type=float, default=60.0)
    args = ap.parse_args(argv)

    if not args.no_wheels:
        wheels = build_wheels(args.wheels, args.local_wheels)
        print(f"{args.wheels}: {len(wheels)} wheels, {_tree_bytes(wheels) / MIB:.1f} MiB")
        for w in wheels:
            print(f"  {w.name}")
    real = ROOT / ".realcache" / "prepared"
    if args.archive and not args.wheels_only:
        size = args.size or recipe_size(args.recipe)
        build_real(args.archive, args.work, real, size, args.quality)
        print(f"{real}: cache/{size}.npz at quality {args.quality}, {_tree_bytes([real]) / MIB:.1f} MiB")
    carried = [p for p in (args.wheels, real) if p.exists()]
    sizes = travel_bytes(ROOT, carried)
    total = sum(sizes.values())
    for key, value in sizes.items():
        print(f"  {key:<24} {value / MIB:8.2f} MiB")
    verdict = "fits" if total <= args.limit_mib * MIB else "TOO LARGE"
    print(f"total that would travel: {total / MIB:.2f} MiB (limit {args.limit_mib:g} MiB): {verdict}")
    print("carry: " + " ".join(str(p.relative_to(ROOT)) for p in carried if p.is_relative_to(ROOT)))
    return 0 if total <= args.limit_mib * MIB else 1


if __name__ == "__main__":
    sys.exit(main())
