"""`prepare` end to end on the synthetic archive: outputs, findings, caches, idempotency."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fxbench.data.cache import find_cache, letterbox, letterbox_box, load_cache
from fxbench.data.decode import decode_image
from fxbench.data.fracatlas import rasterize
from fxbench.data.prepare import MANIFEST_COLUMNS, prepare
from fxbench.data.splits import seed_split
from fxbench.errors import ConfigError, DataError

CONTRACT_COLUMNS = [
    "image_id", "label", "split", "width", "height", "hand", "leg", "hip", "shoulder", "mixed", "hardware",
    "multiscan", "fracture_count", "frontal", "lateral", "oblique", "csv_fractured", "duplicate_group", "image_path",
]
REPORT_KEYS = {"images", "fractured", "polygons", "exif_rotated", "truncated", "duplicate_groups",
               "cross_split_duplicate_groups", "split_mode", "split_counts", "split_sha256", "disagreements"}


def _manifest(prep: Path) -> list[dict[str, str]]:
    with open(prep / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _report(prep: Path) -> dict:
    return json.loads((prep / "prepare_report.json").read_text())


# --------------------------------------------------------------------------------------
# the shared prepared folder


def test_manifest_and_report_contract(prepared: Path) -> None:
    rows = _manifest(prepared)
    header = list(rows[0].keys())
    assert header[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS and tuple(header) == MANIFEST_COLUMNS
    assert [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    report = _report(prepared)
    assert REPORT_KEYS <= set(report)
    assert report["images"] == len(rows) == 64
    assert report["fractured"] == sum(int(r["label"]) for r in rows)
    assert sum(report["split_counts"].values()) == 64
    assert report["split_mode"] == "grouped" and report["seed"] == 42
    assert set(report["split_modes"]) == {"seed", "official", "grouped"}


def test_masks_native_size_and_binary(prepared: Path) -> None:
    for row in _manifest(prepared):
        mask = np.asarray(Image.open(prepared / "masks" / f"{Path(row['image_id']).stem}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (int(row["height"]), int(row["width"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert bool(mask.any()) == (row["label"] == "1")


def test_caches_match_manifest(prepared: Path) -> None:
    rows = _manifest(prepared)
    for size in (64, 128):
        c = load_cache(prepared / "cache" / f"{size}.npz")
        assert c.size == size and c.format == "raw" and len(c.sha256) == 64
        assert c.image_ids == [r["image_id"] for r in rows]
        assert c.images.shape == (64, size, size) and c.images.dtype == np.uint8
        assert set(np.unique(c.masks)) <= {0, 1}
        for k, row in enumerate(rows):
            h, w = int(row["height"]), int(row["width"])
            assert tuple(c.native_hw[k]) == (h, w)
            assert tuple(c.boxes[k]) == letterbox_box(h, w, size)
            assert bool(c.masks[k].any()) == (row["label"] == "1")  # no positive lost by resizing
            top, left, bh, bw = c.boxes[k]
            outside = np.ones((size, size), bool)
            outside[top : top + bh, left : left + bw] = False
            assert not c.images[k][outside].any()  # zero padding


def test_findings_match_the_synthetic_ground_truth(prepared: Path, synth_plan) -> None:  # type: ignore[no-untyped-def]
    report = _report(prepared)
    plan = synth_plan
    rotated = sorted(im.image_id for im in plan.images if im.orientation != 1)
    truncated = sorted(im.image_id for im in plan.images if im.truncated)
    dups = sorted(sorted([im.image_id, im.duplicate_of]) for im in plan.images if im.duplicate_of)
    assert plan.positive_copy and any(plan.positive_copy in g for g in dups)
    assert report["exif_rotated_ids"] == rotated and report["exif_rotated"] == len(rotated) >= 4
    assert report["truncated_ids"] == truncated and report["truncated"] >= 1
    assert report["duplicate_group_members"] == dups and report["duplicate_groups"] == len(dups)
    assert report["cross_split_duplicate_groups"] == 0  # grouped keeps them together
    n_polys = sum(len(im.fractures) for im in plan.images)
    assert report["fractured"] == len(plan.positives)
    assert report["csv_fractured"] == len(plan.positives) - 1  # one deliberate wrong 0
    assert report["polygons"] == {"coco": n_polys, "vgg": n_polys - 1}
    assert report["polygons_rasterized"] == n_polys and report["rasterized_from"]["coco"] == len(plan.positives)
    by_id = {d["image_id"]: d for d in report["disagreements"]}
    assert set(by_id) == {plan.vgg_missing, plan.csv_wrong, plan.positive_copy}
    assert "pixel-identical to fractured" in by_id[plan.positive_copy]["issues"][0]
    assert by_id[plan.positive_copy]["label"] == 0
    assert len(report["duplicate_groups_mixed_labels"]) == 1
    assert by_id[plan.vgg_missing]["counts"]["vgg"] == by_id[plan.vgg_missing]["counts"]["coco"] - 1
    assert by_id[plan.vgg_missing]["source"] == "coco"
    assert any("csv fractured=0" in issue for issue in by_id[plan.csv_wrong]["issues"])
    rows = {r["image_id"]: r for r in _manifest(prepared)}
    assert rows[plan.csv_wrong]["label"] == "1" and rows[plan.csv_wrong]["csv_fractured"] == "0"


def test_masks_equal_ground_truth_in_the_exif_frame(prepared: Path, synth_plan, synth_archive: Path) -> None:  # type: ignore[no-untyped-def]
    rotated_pos = [im for im in synth_plan.images if im.fractures and im.orientation in (6, 8)]
    assert rotated_pos
    for im in synth_plan.images:
        if not im.fractures:
            continue
        mask = np.asarray(Image.open(prepared / "masks" / f"{Path(im.image_id).stem}.png")) > 0
        assert mask.shape == (im.height, im.width)
        assert np.array_equal(mask, rasterize([tuple(p) for p in im.fractures], im.height, im.width))
    for im in rotated_pos:  # and the mask covers the dark crack of the *displayed* image
        pixels = decode_image((synth_archive / "FracAtlas/images/Fractured" / im.image_id).read_bytes(), im.image_id).pixels
        mask = np.asarray(Image.open(prepared / "masks" / f"{Path(im.image_id).stem}.png")) > 0
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
        ring &= ~mask
        assert pixels[mask].mean() < 0.75 * pixels[ring].mean()


def test_find_cache(prepared: Path) -> None:
    assert find_cache(prepared, 64).name == "64.npz"
    assert find_cache(prepared, 96).name == "128.npz"
    with pytest.raises(DataError) as err:
        find_cache(prepared, 256)
    assert "--cache-size 256" in str(err.value) and "have: 64, 128" in str(err.value)


# --------------------------------------------------------------------------------------
# letterbox


def test_letterbox_rule() -> None:
    img = np.full((100, 50), 200, np.uint8)
    mask = np.zeros((100, 50), bool)
    mask[10:12, 10:11] = True  # 2 px: 0.8 px at 0.64 scale, would vanish without the keep-one rule
    out, m, box = letterbox(img, mask, 64)
    assert box == (0, 16, 64, 32)
    assert out[:, :16].max() == 0 and out[:, 48:].max() == 0 and out[:, 16:48].min() > 150
    assert int(m.sum()) == 1 and m[:, 16:48].sum() == 1
    big = np.zeros((100, 50), bool)
    big[0:50, 0:25] = True  # a quarter of the image -> a quarter of the box
    _, m2, _ = letterbox(img, big, 64)
    assert int(m2.sum()) == 32 * 16


# --------------------------------------------------------------------------------------
# behaviour of prepare runs (small archive of its own)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fxbench.data.synthetic import make_synthetic_archive

    root = tmp_path_factory.mktemp("small")
    return make_synthetic_archive(root, n_images=24, seed=5, scale=0.15, large_fraction=0.05, positive_fraction=0.3)


def test_idempotent_split_change_and_force(tmp_path: Path, small_archive: Path) -> None:
    out = tmp_path / "prep"
    first = prepare(small_archive, out, cache_sizes=(32,), workers=1)
    assert not first.skipped and set(first.rebuilt) == {"masks", "cache/32.npz"}
    stamp = (out / "cache/32.npz").stat().st_mtime_ns, (out / "manifest.csv").stat().st_mtime_ns
    again = prepare(small_archive, out, cache_sizes=(32,), workers=1)
    assert again.skipped and stamp == ((out / "cache/32.npz").stat().st_mtime_ns, (out / "manifest.csv").stat().st_mtime_ns)
    # a new split needs no decoding: same caches, new manifest
    seed_mode = prepare(small_archive, out, split_mode="seed", cache_sizes=(32,), workers=1)
    assert not seed_mode.skipped and seed_mode.rebuilt == []
    assert (out / "cache/32.npz").stat().st_mtime_ns == stamp[0]
    rows = _manifest(out)
    with open(small_archive / "FracAtlas/dataset.csv", newline="") as fh:
        csv_rows = [(r["image_id"], int(r["fractured"])) for r in csv.DictReader(fh)]
    assert {r["image_id"]: r["split"] for r in rows} == seed_split(csv_rows, 42)
    assert _report(out)["split_sha256"] == seed_mode.report["split_sha256"]
    # another cache size: only that cache is built
    more = prepare(small_archive, out, split_mode="seed", cache_sizes=(32, 48), workers=1)
    assert more.rebuilt == ["cache/48.npz"] and set(more.report["caches"]) == {"32", "48"}
    forced = prepare(small_archive, out, split_mode="seed", cache_sizes=(48,), force=True, workers=1)
    assert set(forced.rebuilt) == {"masks", "cache/48.npz"}
    assert (out / "cache/32.npz").exists()  # same inputs: the other cache stays valid
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".prepare_state.json"] == []


def test_jpeg_cache_matches_raw(tmp_path: Path, small_archive: Path) -> None:
    raw = prepare(small_archive, tmp_path / "raw", cache_sizes=(64,), workers=1).out
    jpg = prepare(small_archive, tmp_path / "jpg", cache_sizes=(64,), cache_format="jpeg", workers=1).out
    a, b = load_cache(raw / "cache/64.npz"), load_cache(jpg / "cache/64.npz")
    assert b.format == "jpeg" and a.image_ids == b.image_ids
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.boxes, b.boxes)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).mean() < 2.0


def test_zip_and_folder_give_the_same_result(tmp_path: Path, small_archive: Path) -> None:
    zpath = tmp_path / "a.zip"
    shutil.make_archive(str(zpath.with_suffix("")), "zip", small_archive)
    from_zip = prepare(zpath, tmp_path / "z", cache_sizes=(32,), workers=2)
    from_dir = prepare(small_archive, tmp_path / "d", cache_sizes=(32,), workers=1)
    assert (tmp_path / "z/manifest.csv").read_text() == (tmp_path / "d/manifest.csv").read_text()
    assert from_zip.report["split_sha256"] == from_dir.report["split_sha256"]
    assert np.array_equal(load_cache(tmp_path / "z/cache/32.npz").images, load_cache(tmp_path / "d/cache/32.npz").images)


def test_bad_inputs_are_skipped_and_recorded(tmp_path: Path, small_archive: Path) -> None:
    arch = tmp_path / "arch"
    shutil.copytree(small_archive, arch)
    root = arch / "FracAtlas"
    negs = sorted((root / "images/Non_fractured").iterdir())
    negs[0].write_bytes(b"")  # zero-byte
    negs[1].write_bytes(b"<html>not an image</html>")  # non-image with an image name
    coco_path = root / "Annotations/COCO JSON/COCO_fracture_masks.json"
    coco = json.loads(coco_path.read_text())
    coco["annotations"][0]["segmentation"] = [[1, 2, float("nan"), 4, 5, 6]]
    coco["annotations"].append({"image_id": coco["images"][0]["id"], "segmentation": [[1e6, 1e6, 2e6, 1e6, 2e6, 2e6]]})
    coco["annotations"].append({"segmentation": "oops"})
    coco_path.write_text(json.dumps(coco))
    with open(root / "dataset.csv", "ab") as fh:
        fh.write(b"IMG9999999.jpg,0,1,0,0,0,0,0,0,0,1,0,0\r\n")  # row without an image
    result = prepare(arch, tmp_path / "prep", cache_sizes=(32,), workers=1)
    report = result.report
    skipped = {s["image_id"] for s in report["skipped_images"]}
    assert skipped == {negs[0].name, negs[1].name}
    assert report["images"] == 22
    kinds = report["warnings_by_kind"]
    assert kinds["image_skipped"] == 2 and kinds["image_missing"] == 1
    assert kinds["coco_bad_polygon"] == 1 and kinds["coco_bad_annotation"] >= 1 and kinds["polygon_out_of_bounds"] == 1
    cache = load_cache(tmp_path / "prep/cache/32.npz")
    assert cache.image_ids == [r["image_id"] for r in _manifest(tmp_path / "prep")]
    assert skipped.isdisjoint(cache.image_ids)


def test_argument_and_input_errors(tmp_path: Path, small_archive: Path) -> None:
    with pytest.raises(DataError, match="archive not found"):
        prepare(tmp_path / "nope.zip", tmp_path / "o")
    with pytest.raises(ConfigError, match="split mode"):
        prepare(small_archive, tmp_path / "o", split_mode="random")
    with pytest.raises(ConfigError, match="cache size"):
        prepare(small_archive, tmp_path / "o", cache_sizes=(8,))
    with pytest.raises(ConfigError, match="cache format"):
        prepare(small_archive, tmp_path / "o", cache_format="png")
    arch = tmp_path / "nosplit"
    shutil.copytree(small_archive, arch)
    shutil.rmtree(arch / "FracAtlas/Utilities")
    with pytest.raises(DataError, match="official"):
        prepare(arch, tmp_path / "o2", split_mode="official", cache_sizes=(32,), workers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no dataset.csv"):
        prepare(empty, tmp_path / "o3")


def test_interrupted_prepare_leaves_nothing_half_written(tmp_path: Path, small_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fxbench.data.prepare as prep_mod

    calls = {"n": 0}
    real = prep_mod._process

    def flaky(task):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prep_mod, "_process", flaky)
    out = tmp_path / "prep"
    with pytest.raises(KeyboardInterrupt):
        prepare(small_archive, out, cache_sizes=(32,), workers=1)
    leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert leftovers == ["cache"]
    monkeypatch.setattr(prep_mod, "_process", real)
    assert not prepare(small_archive, out, cache_sizes=(32,), workers=1).skipped


def test_polygon_shape_disagreement_is_recorded(tmp_path: Path, small_archive: Path) -> None:
    arch = tmp_path / "arch"
    shutil.copytree(small_archive, arch)
    vgg_path = arch / "FracAtlas/Annotations/VGG JSON/VGG_fracture_masks.json"
    vgg = json.loads(vgg_path.read_text())
    counts = json.loads((arch / "FracAtlas/Annotations/COCO JSON/COCO_fracture_masks.json").read_text())
    n_by_image = {im["file_name"]: 0 for im in counts["images"]}
    for ann in counts["annotations"]:
        n_by_image[next(im["file_name"] for im in counts["images"] if im["id"] == ann["image_id"])] += 1
    target = next(k for k, v in vgg.items() if len(v["regions"]) == n_by_image[k])  # counts agree
    shape = vgg[target]["regions"]["0"]["shape_attributes"]
    shape["all_points_x"] = [x + 1.5 for x in shape["all_points_x"]]
    vgg_path.write_text(json.dumps(vgg))
    report = prepare(arch, tmp_path / "prep", cache_sizes=(32,), workers=1).report
    entry = next(d for d in report["disagreements"] if d["image_id"] == target)
    assert "different polygon shapes" in entry["issues"][0] and entry["source"] == "coco"


def test_prepare_report_is_the_typed_record(small_archive: Path, tmp_path: Path) -> None:
    """prepare_report.json = PrepareReport's fields in order, then the keys prepare adds."""
    from pydantic import ValidationError

    from fxbench.data.report import PrepareReport

    prepare(small_archive, tmp_path / "prep", cache_sizes=(64,))
    body = json.loads((tmp_path / "prep" / "prepare_report.json").read_text())
    later = ["gt_boxes", "box_disagreements", "timings_s", "workers", "rebuilt"]
    assert list(body) == list(PrepareReport.model_fields) + later
    record = PrepareReport(**{k: v for k, v in body.items() if k not in later})
    assert record.to_json() == {k: v for k, v in body.items() if k not in later}
    assert record.images == record.fractured + record.non_fractured == sum(record.split_counts.values())
    with pytest.raises(ValidationError):
        PrepareReport(**{**record.to_json(), "imagez": 1})
