"""CLI verbs synth / prepare / download through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fxbench.cli.app import app

runner = CliRunner()


def test_synth_then_prepare(tmp_path: Path) -> None:
    arch = tmp_path / "synth.zip"
    res = runner.invoke(app, ["synth", str(arch), "--n-images", "16", "--seed", "3", "--zip", "--scale", "0.15"])
    assert res.exit_code == 0, res.output
    assert arch.is_file()
    again = runner.invoke(app, ["synth", str(arch), "--n-images", "16", "--zip"])
    assert again.exit_code == 3 and "already exists" in again.output
    out = tmp_path / "prep"
    res = runner.invoke(app, ["prepare", "--archive", str(arch), "--out", str(out), "--split-mode", "seed",
                              "--cache-size", "32", "--cache-size", "64", "--cache-format", "jpeg", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "train / val / test" in res.output and f"fxbench train --set data.prepared={out}" in res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["split_mode"] == "seed" and report["images"] == 16
    assert set(report["caches"]) == {"32", "64"} and report["caches"]["32"]["format"] == "jpeg"
    res = runner.invoke(app, ["prepare", "--archive", str(arch), "--out", str(out), "--split-mode", "seed",
                              "--cache-size", "32", "--cache-size", "64", "--cache-format", "jpeg", "--workers", "1"])
    assert res.exit_code == 0 and "up to date" in res.output


def test_synth_is_deterministic(tmp_path: Path) -> None:
    for name in ("a.zip", "b.zip"):
        assert runner.invoke(app, ["synth", str(tmp_path / name), "--n-images", "12", "--seed", "9", "--zip", "--scale", "0.1"]).exit_code == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_prepare_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    res = runner.invoke(app, ["prepare", "--archive", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 3
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "archive not found" in lines[0] and "Traceback" not in res.output
    res = runner.invoke(app, ["prepare", "--out", str(tmp_path / "o")])  # nothing registered in FXBENCH_HOME
    assert res.exit_code == 3 and "fxbench download" in res.output
    res = runner.invoke(app, ["prepare", "--archive", str(tmp_path), "--split-mode", "nope"])
    assert res.exit_code == 2


def test_download_offline_and_from_file(tmp_path: Path, synth_archive: Path) -> None:
    res = runner.invoke(app, ["download", "--out", str(tmp_path / "a")])
    assert res.exit_code == 5 and "--from-file" in res.output and "Traceback" not in res.output
    import shutil

    zpath = Path(shutil.make_archive(str(tmp_path / "fa"), "zip", synth_archive))
    res = runner.invoke(app, ["download", "--from-file", str(zpath), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a" / "FracAtlas.json").read_text())["source"] == "from-file"
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    res = runner.invoke(app, ["download", "--from-file", str(bad)])
    assert res.exit_code == 3 and "not a readable zip" in res.output


def test_registered_archive_is_the_default(tmp_path: Path, synth_archive: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "home"))
    zpath = Path(shutil.make_archive(str(tmp_path / "fa"), "zip", synth_archive))
    assert runner.invoke(app, ["download", "--from-file", str(zpath)]).exit_code == 0
    res = runner.invoke(app, ["prepare", "--cache-size", "32", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "home/prepared/fracatlas/manifest.csv").is_file()


def test_help_lists_data_verbs() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for verb in ("download", "prepare", "synth"):
        assert verb in res.output


def test_rerun_keeps_the_folder_split_mode(tmp_path: Path, synth_archive: Path) -> None:
    out = tmp_path / "prep"
    base = ["prepare", "--archive", str(synth_archive), "--out", str(out), "--workers", "1", "--cache-size", "32"]
    assert runner.invoke(app, [*base, "--split-mode", "official", "--seed", "7"]).exit_code == 0
    res = runner.invoke(app, [*base, "--cache-size", "48"])
    assert res.exit_code == 0 and "keeping split mode 'official' (seed 7)" in res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["split_mode"], report["seed"]) == ("official", 7) and set(report["caches"]) == {"32", "48"}
    assert runner.invoke(app, [*base, "--split-mode", "grouped"]).exit_code == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["split_mode"], report["seed"]) == ("grouped", 42)


def test_rerun_without_cache_size_keeps_the_folder_caches(tmp_path: Path, synth_archive: Path) -> None:
    out = tmp_path / "prep"
    base = ["prepare", "--archive", str(synth_archive), "--out", str(out), "--workers", "1"]
    assert runner.invoke(app, [*base, "--cache-size", "32", "--cache-format", "jpeg"]).exit_code == 0
    sha = json.loads((out / "prepare_report.json").read_text())["caches"]["32"]["sha256"]
    res = runner.invoke(app, base)  # no --cache-size: keep the 32-px JPEG cache, build no 512
    assert res.exit_code == 0 and "up to date" in res.output
    res = runner.invoke(app, [*base, "--force"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert {k: v["format"] for k, v in report["caches"].items()} == {"32": "jpeg"}
    assert report["caches"]["32"]["sha256"] == sha  # rebuilt byte-identical
    assert sorted(report["rebuilt"]) == ["cache/32.npz", "masks"]


def test_prepare_jpeg_quality_option(tmp_path: Path) -> None:
    """--jpeg-quality: recorded per cache, smaller at lower quality, kept on a plain re-run,
    rebuilt when another quality is asked for, refused out of range."""
    arch = tmp_path / "arch"
    assert runner.invoke(app, ["synth", str(arch), "--n-images", "12", "--seed", "1", "--scale", "0.15"]).exit_code == 0
    base = ["prepare", "--archive", str(arch), "--split-mode", "seed", "--cache-size", "64", "--cache-format", "jpeg",
            "--workers", "1"]
    sizes = {}
    for quality in (95, 60):
        out = tmp_path / f"q{quality}"
        res = runner.invoke(app, [*base, "--out", str(out), "--jpeg-quality", str(quality)])
        assert res.exit_code == 0, res.output
        cache = json.loads((out / "prepare_report.json").read_text())["caches"]["64"]
        assert cache["jpeg_quality"] == quality
        sizes[quality] = cache["bytes"]
    assert sizes[60] < sizes[95]
    q60 = tmp_path / "q60"
    again = runner.invoke(app, [*base, "--out", str(q60)])  # no --jpeg-quality: the cache stays as it is
    assert again.exit_code == 0 and "up to date" in again.output
    other = runner.invoke(app, [*base, "--out", str(q60), "--jpeg-quality", "85"])
    assert other.exit_code == 0, other.output
    assert json.loads((q60 / "prepare_report.json").read_text())["caches"]["64"]["jpeg_quality"] == 85
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--jpeg-quality", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
