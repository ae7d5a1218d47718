"""`fxbench predict` on the user's own images: PNG, JPEG and DICOM of any size, folders, bad files.

One tiny run is trained once for the module (the easy bars of ``easy_data``, a 128-px cache read
at network size 64, so predict's input path includes the cache-to-network resize). Its
probabilities are near 0.5 everywhere, so the tests use a decision whose threshold sits at a
quantile of the run's val probabilities: masks are then non-trivial (many pixels, several
components) and every count in the table can be checked against the mask files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from easy_data import make_easy_prepared
from PIL import Image
from typer.testing import CliRunner

from fxbench.artifacts.decision import Decision, write_decision
from fxbench.artifacts.predictions import load_predictions
from fxbench.cli.app import app
from fxbench.config import load_config
from fxbench.evaluate.metrics import label_components, threshold_probs
from fxbench.evaluate.native import to_native
from fxbench.predict import images as pimages

pydicom = pytest.importorskip("pydicom")


# ---------------------------------------------------------------------------------- helpers


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                window: tuple[float, float] | None = None) -> Path:
    """A minimal, valid CR DICOM file (explicit VR little endian) holding ``pixels`` (uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def radiograph(h: int, w: int, seed: int, bars: int = 2, lo: float = 70.0, hi: float = 190.0) -> np.ndarray:
    """A noisy grey image with bright bars (what the easy run was trained on), float [H,W] in 0..255."""
    rng = np.random.default_rng(seed)
    img = rng.normal(lo, 12, (h, w))
    for _ in range(bars):
        y, x = rng.integers(4, h - 12), rng.integers(4, w - 24)
        img[y : y + 6, x : x + 20] = hi
    return np.clip(img, 0, 255)


def save_rgb(path: Path, grey: np.ndarray, **kw) -> Path:  # noqa: ANN003
    Image.fromarray(grey.astype(np.uint8)).convert("RGB").save(path, **kw)
    return path


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny unet_dual run (1 epoch, 3 steps) with val predictions and a decision whose
    threshold keeps the brightest ~30% of val pixels."""
    from fxbench.train.loop import Trainer
    from fxbench.workflow import evaluate_run

    root = tmp_path_factory.mktemp("predict")
    prep = make_easy_prepared(root / "prep", n=32, size=128)
    cfg = load_config(None, [
        f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=8",
        "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=3", "train.eval_batch_size=16",
        "eval.bootstrap=0", "runtime.device=cpu", "runtime.channels_last=false", "optim.lr=3e-3",
    ], environ={})
    run_dir = root / "runs" / "tiny"
    Trainer(cfg, run_dir).run()
    evaluate_run(run_dir, "val", tta="none", resolution="native", bootstrap=0, argv=["eval"])
    pred = load_predictions(run_dir / "predictions" / "val.npz")
    inside = np.concatenate([pred.probs[i, t : t + h, x : x + w].ravel().astype(np.float64)
                             for i, (t, x, h, w) in enumerate(pred.boxes)])
    thr = float(np.quantile(inside, 0.7))
    assert 0.0 < thr < 1.0
    pres = pred.presence["head"]
    write_decision(run_dir / "decision.json", Decision(
        threshold=thr, presence_source="head", presence_threshold=float(np.median(pres)), tta="none",
        selected_on="user", source="user-fixed",
    ))
    return run_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    """A folder of mixed inputs: {relative path: (H, W)} of the readable ones (+ 2 unreadable)."""
    root = tmp_path_factory.mktemp("scans")
    sub = root / "ward b"
    sub.mkdir()
    sizes: dict[str, tuple[int, int]] = {}

    Image.fromarray(radiograph(130, 90, 1).astype(np.uint8)).save(root / "knee.png")
    sizes["knee.png"] = (130, 90)
    save_rgb(root / "knee.jpg", radiograph(150, 200, 2), quality=92)  # same stem as knee.png
    sizes["knee.jpg"] = (150, 200)
    save_rgb(sub / "wrist.jpeg", radiograph(90, 130, 3), quality=90)
    sizes["ward b/wrist.jpeg"] = (90, 130)
    # 16-bit grey PNG, square and smaller than the network input (letterbox upsamples it).
    Image.fromarray((radiograph(48, 48, 4) * 256).astype(np.uint16)).save(root / "hand16.png")
    sizes["hand16.png"] = (48, 48)

    # MONOCHROME1 12-bit with a window: bone dark in the stored values.
    mono1 = (4095 - radiograph(120, 100, 5) * 16).astype(np.uint16)
    write_dicom(sub / "hip_m1.dcm", mono1, "MONOCHROME1", 12, window=(2048, 4096))
    sizes["ward b/hip_m1.dcm"] = (120, 100)
    # MONOCHROME2 16-bit, no window (data range).
    write_dicom(root / "shoulder_m2.dcm", (radiograph(100, 140, 6) * 250).astype(np.uint16), "MONOCHROME2", 16)
    sizes["shoulder_m2.dcm"] = (100, 140)
    # A DICOM without a file extension (as PACS exports write them).
    write_dicom(sub / "IM0001", (radiograph(70, 110, 7) * 16).astype(np.uint16), "MONOCHROME2", 12)
    sizes["ward b/IM0001"] = (70, 110)

    (root / "broken.jpg").write_text("this is not a JPEG\n")
    (sub / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image suffix\n")
    (root / ".hidden").mkdir()
    Image.fromarray(radiograph(40, 40, 8).astype(np.uint8)).save(root / ".hidden" / "skip.png")
    return {"root": root, "sizes": sizes}  # type: ignore[return-value]


@pytest.fixture(scope="module")
def predicted(run: Path, folder, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("preds") / "out"
    result = CliRunner().invoke(app, ["predict", str(run), str(folder["root"]), "--out", str(out), "--device", "cpu"])
    return result, out


# ---------------------------------------------------------------------------------- the CLI


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def test_predict_folder_writes_native_masks_overlays_and_rows(predicted, folder, run: Path) -> None:  # type: ignore[no-untyped-def]
    result, out = predicted
    assert result.exit_code == 0, result.output
    root, sizes = folder["root"], folder["sizes"]
    rows = _rows(out)
    assert sorted(rows) == sorted(str(root / rel) for rel in sizes)  # one row per readable image
    doc = json.loads((out / "predictions.json").read_text())
    assert [r["file"] for r in doc["images"]] == list(rows)
    decision = json.loads((run / "decision.json").read_text())
    assert doc["threshold"] == decision["threshold"] and doc["presence_source"] == "head"
    assert doc["cache_size"] == 128 and doc["image_size"] == 64 and doc["decision_source"] == "user-fixed"

    masks_seen = set()
    total_area = 0
    for rel, (h, w) in sizes.items():
        row = rows[str(root / rel)]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        p = float(row["presence_probability"])
        assert 0.0 <= p <= 1.0
        assert int(row["decision"]) == int(p >= decision["presence_threshold"])
        with Image.open(out / row["mask"]) as im:
            assert im.size == (w, h) and im.mode == "L"  # native size
            mask = np.asarray(im)
        assert set(np.unique(mask)) <= {0, 255}
        assert int(row["fracture_area_px"]) == int((mask > 0).sum())
        # one rule: a non-empty mask only with a positive call; the ungated count stays visible
        assert int(row["decision"]) or int(row["fracture_area_px"]) == 0
        assert int(row["pixels_above_threshold"]) >= int(row["fracture_area_px"])
        assert int(row["components"]) == label_components(mask > 0)[1]
        total_area += int(row["fracture_area_px"])
        with Image.open(out / row["overlay"]) as ov:
            ov.load()
            assert ov.size == (w, h) and ov.mode == "RGB"
        masks_seen.add(row["mask"])
        json_row = next(r for r in doc["images"] if r["file"] == row["file"])
        assert json_row["fracture_area_px"] == int(row["fracture_area_px"])
        assert json_row["components"] == int(row["components"])
    assert len(masks_seen) == len(sizes)  # knee.png and knee.jpg did not overwrite each other
    # Sorted order: knee.jpg takes "knee", knee.png gets its suffix added; the table says which.
    assert rows[str(root / "knee.jpg")]["mask"] == "masks/knee.png"
    assert rows[str(root / "knee.png")]["mask"] == "masks/knee.png.png"
    assert rows[str(root / "ward b" / "IM0001")]["overlay"] == "overlays/ward b__IM0001.png"
    assert total_area > 0 and any(int(r["components"]) >= 1 for r in rows.values())


def test_unreadable_files_are_listed_not_fatal(predicted, folder) -> None:  # type: ignore[no-untyped-def]
    result, out = predicted
    assert result.exit_code == 0
    root = folder["root"]
    with open(out / "errors.csv", newline="") as fh:
        errors = {r["file"]: r["error"] for r in csv.DictReader(fh)}
    assert sorted(errors) == sorted([str(root / "broken.jpg"), str(root / "ward b" / "empty.png")])
    assert "not a readable image" in errors[str(root / "broken.jpg")]
    assert "2 unreadable files" in result.output
    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["errors"]) == 2
    names = {Path(r["file"]).name for r in doc["images"]}
    assert "notes.txt" not in names and "skip.png" not in names  # not images / hidden folder


def test_predict_matches_eval_on_the_same_image(run: Path, tmp_path: Path) -> None:
    """A prepared image given to predict reaches the network exactly as in eval: same presence
    score, same native mask (eval's native rule) under the same threshold."""
    from fxbench.data.cache import load_cache

    pred = load_predictions(run / "predictions" / "val.npz")
    cache = load_cache(Path(pred.meta["prepared"]) / "cache" / "128.npz")
    idx = {iid: i for i, iid in enumerate(cache.image_ids)}
    pick = [0, 1, 2]
    for i in pick:  # the easy cache's images are their own native images (128 x 128, no padding)
        Image.fromarray(cache.images[idx[pred.image_ids[i]]]).save(tmp_path / f"{i}.png")
    thr = json.loads((run / "decision.json").read_text())["threshold"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(run), *(str(tmp_path / f"{i}.png") for i in pick),
                                      "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    for i in pick:
        row = rows[str(tmp_path / f"{i}.png")]
        assert float(row["presence_probability"]) == pytest.approx(float(pred.presence["head"][i]), abs=1e-5)
        expected = threshold_probs(to_native(pred.probs[i], pred.boxes[i], pred.native_hw[i]), thr)
        assert abs(int(row["pixels_above_threshold"]) - int(expected.sum())) <= 1e-3 * expected.size
        if not int(row["decision"]):  # gated by the image decision (predict's documented rule)
            expected = np.zeros_like(expected)
        with Image.open(out / row["mask"]) as im:
            got = np.asarray(im) > 0
        assert got.shape == expected.shape
        assert (got != expected).mean() < 1e-3  # float16 ties at the threshold at most


@pytest.mark.parametrize("source", ["mean", "pred_area"])
def test_predict_scores_the_seed_presence_modes_like_eval(run: Path, tmp_path: Path, source: str) -> None:
    """A decision on ``mean`` or ``pred_area`` (issue 13) gives predict the score eval computes."""
    from fxbench.data.cache import load_cache
    from fxbench.evaluate import with_derived_presence

    pred = load_predictions(run / "predictions" / "val.npz")
    cache = load_cache(Path(pred.meta["prepared"]) / "cache" / "128.npz")
    idx = {iid: i for i, iid in enumerate(cache.image_ids)}
    Image.fromarray(cache.images[idx[pred.image_ids[0]]]).save(tmp_path / "0.png")
    base = json.loads((run / "decision.json").read_text())
    dec = write_decision(tmp_path / "d.json", Decision(
        threshold=base["threshold"], presence_source=source, presence_threshold=0.5, tta="none",
        selected_on="user", source="user-fixed",
    ))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "0.png"), "-o", str(out), "--device", "cpu",
                                      "--decision", str(dec)])
    assert result.exit_code == 0, result.output
    want = with_derived_presence(pred, base["threshold"]).presence[source][0]
    assert float(_rows(out)[str(tmp_path / "0.png")]["presence_probability"]) == pytest.approx(float(want), abs=1e-5)


def test_predict_refuses_bad_decisions_and_inputs(run: Path, folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    img = folder["root"] / "knee.png"
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "-o", str(tmp_path / "o"),
                                 "--decision", str(tmp_path / "nope.json")])
    assert r.exit_code == 3 and "decision file not found" in r.output
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "-o", str(tmp_path / "o"), "--tta", "hv"])
    assert r.exit_code == 2 and "differs from the decision's tta" in r.output
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 3 and "input not found" in r.output
    # A blend's decision scores a presence the run cannot produce: refused, not silently replaced.
    blend = write_decision(tmp_path / "blend.json", Decision(threshold=0.5, presence_source="blend", tta="none"))
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "-o", str(tmp_path / "o"), "--decision", str(blend)])
    assert r.exit_code == 2 and "presence source 'blend'" in r.output


# ---------------------------------------------------------------------------------- reading


def test_monochrome1_equals_its_inverted_monochrome2_twin(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(300, 3800, (37, 53)).astype(np.uint16)
    twin = (4095 - stored).astype(np.uint16)
    # Without a window: the data range is mapped to 0..255.
    a = pimages.read_grey(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 12))
    b = pimages.read_grey(write_dicom(tmp_path / "m2.dcm", twin, "MONOCHROME2", 12))
    assert a.dtype == np.uint8 and a.shape == (37, 53)
    np.testing.assert_array_equal(a, b)
    assert a.min() == 0 and a.max() == 255
    # With a window (LINEAR: centre c maps to the middle; the mirrored twin's centre is 4096 - c).
    a = pimages.read_grey(write_dicom(tmp_path / "w1.dcm", stored, "MONOCHROME1", 12, window=(1500, 2000)))
    b = pimages.read_grey(write_dicom(tmp_path / "w2.dcm", twin, "MONOCHROME2", 12, window=(4096 - 1500, 2000)))
    np.testing.assert_array_equal(a, b)
    # MONOCHROME1: the brightest stored value is the darkest pixel.
    assert a[np.unravel_index(np.argmax(stored), stored.shape)] == 0


def test_dicom_window_sets_the_grey_scale(tmp_path: Path) -> None:
    """A window wider than the data keeps the data in the middle greys (not stretched)."""
    values = np.tile(np.array([1000, 1500, 2000, 3000], np.uint16), (4, 1))
    grey = pimages.read_grey(write_dicom(tmp_path / "w.dcm", values, "MONOCHROME2", 12, window=(2048, 4096)))
    # LINEAR window: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 4095, then 0..4095 -> 0..255.
    expected = np.floor((((values - 2047.5) / 4095 + 0.5) * 4095) * 255 / 4095 + 0.5)
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))
    assert 50 < grey.min() and grey.max() < 200
    # A narrow window clips to black and white.
    grey = pimages.read_grey(write_dicom(tmp_path / "n.dcm", values, "MONOCHROME2", 12, window=(1500, 100)))
    # 1500: ((1500 - 1499.5) / 99 + 0.5) * 4095 = 2068.2 of 4095 -> grey 128.8 -> 129
    assert grey[0].tolist() == [0, 129, 255, 255]


def test_images_decode_like_prepare(tmp_path: Path) -> None:
    """read_grey is prepare's decoder: EXIF orientation applied, RGB to L, 16-bit by range class."""
    from fxbench.data.decode import decode_image

    grey = radiograph(30, 50, 9).astype(np.uint8)
    im = Image.fromarray(grey).convert("RGB")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = pimages.read_grey(tmp_path / "rot.jpg")
    assert out.shape == (50, 30)
    np.testing.assert_array_equal(out, decode_image((tmp_path / "rot.jpg").read_bytes(), "x").pixels)
    from fxbench.errors import DataError

    with pytest.raises(DataError, match="cannot read the file"):
        pimages.read_grey(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match="not a readable image"):
        pimages.read_grey(tmp_path / "text.png")


# ---------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_predict_input_is_the_cache_prepare_wrote(tmp_path: Path, resize: str) -> None:
    """A file of the archive through predict's decoder and geometry (read_grey, network_input)
    gives exactly the pixels and box that prepare cached for it, in either resize mode."""
    import csv

    from fxbench.data.cache import load_cache
    from fxbench.data.fracatlas import DatasetSource
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive

    archive = make_synthetic_archive(tmp_path / "archive", n_images=10, seed=3, scale=0.1, positive_fraction=0.4)
    prep = tmp_path / "prep"
    prepare(archive, prep, cache_sizes=(64,), resize=resize)
    cached = load_cache(next((prep / "cache").glob("64*.npz")))
    with open(prep / "manifest.csv", newline="", encoding="utf-8") as fh:
        rel_of = {row["image_id"]: row["image_path"] for row in csv.DictReader(fh)}
    source = DatasetSource(archive)
    assert len(cached.image_ids) == 10
    for i, image_id in enumerate(cached.image_ids):
        path = tmp_path / "inputs" / Path(rel_of[image_id]).name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(source.read_bytes(rel_of[image_id]))
        square, box = pimages.network_input(pimages.read_grey(path), 64, resize=resize)
        np.testing.assert_array_equal(square, cached.images[i], err_msg=image_id)
        assert np.asarray(box).reshape(-1).tolist() == cached.boxes[i].tolist(), image_id


@pytest.mark.parametrize("hw", [(90, 130), (150, 200), (40, 30), (64, 64), (1, 77)])
def test_letterbox_round_trip(hw: tuple[int, int]) -> None:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    img = (40 + 150 * (yy / max(h - 1, 1)) * 0.5 + 150 * (xx / max(w - 1, 1)) * 0.5).astype(np.uint8)
    size = 64
    square, mask, box = pimages.letterbox(img, None, size)
    top, left, bh, bw = box
    scale = size / max(h, w)
    assert (bh, bw) == (max(1, round(h * scale)), max(1, round(w * scale)))
    assert (top, left) == ((size - bh) // 2, (size - bw) // 2)
    assert square.shape == (size, size) and not mask.any()
    pad = np.ones((size, size), bool)
    pad[top : top + bh, left : left + bw] = False
    assert not square[pad].any()  # zero padding
    back = pimages.to_native(square.astype(np.float32), box, (h, w))
    assert back.shape == (h, w)
    if min(h, w) > 8:  # a smooth image survives the round trip to within a few grey levels
        assert np.abs(back - img).mean() < 3.0


def test_to_native_equals_the_torch_bilinear_it_replaces() -> None:
    """predict used torch F.interpolate(bilinear, align_corners=False) to go back to native size;
    to_native is the same map, so one implementation serves eval and predict."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    prob = rng.random((64, 64)).astype(np.float32)
    for box, hw in [((13, 0, 38, 64), (90, 150)), ((0, 10, 64, 44), (128, 88)), ((0, 0, 64, 64), (40, 40)),
                    ((20, 2, 24, 60), (24, 61))]:
        t, x, h, w = box
        crop = torch.from_numpy(np.ascontiguousarray(prob[t : t + h, x : x + w]))[None, None]
        ref = F.interpolate(crop, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(pimages.to_native(prob, box, hw), ref, atol=1e-5)


def test_network_input_repeats_the_cache_then_resize_path() -> None:
    """Letterbox to the cache size, then load_prepared's area resize: the box scales with it."""
    import torch

    from fxbench.data.dataset import _resize_split

    img = radiograph(90, 130, 11).astype(np.uint8)
    square, box = pimages.network_input(img, 64, 128)
    big, _, big_box = pimages.letterbox(img, None, 128)
    ref, _, ref_box = _resize_split(torch.from_numpy(big)[None, None], torch.zeros(1, 1, 128, 128, dtype=torch.uint8),
                                    np.array([big_box], np.int32), 64)
    np.testing.assert_array_equal(square, ref[0, 0].numpy())
    np.testing.assert_array_equal(box, ref_box[0])
    # A 3 x 400 strip is 1 px tall in a 128 cache and would round to 0 px at 64: the box keeps >= 1 px.
    thin = radiograph(3, 400, 12, bars=0).astype(np.uint8)
    _, tbox = pimages.network_input(thin, 64, 128)
    assert tbox[2] >= 1 and tbox[0] + tbox[2] <= 64
    assert pimages.to_native(np.ones((64, 64), np.float32), tbox, (3, 400)).shape == (3, 400)
    same, box64 = pimages.network_input(img, 64)
    np.testing.assert_array_equal(same, pimages.letterbox(img, None, 64)[0])
    assert tuple(box64) == pimages.letterbox(img, None, 64)[2]


# ---------------------------------------------------------------------------------- one rule, no empty output


def test_full_image_mask_comes_with_a_positive_call(run: Path, folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tiny pixel threshold makes every pixel a fracture pixel: a positive call draws the full mask
    (filled, not just an outline); a negative call writes an empty mask, never a full one."""
    img = folder["root"] / "knee.png"
    for pres_thr, positive in ((0.0, True), (1.01, False)):
        dec = write_decision(tmp_path / f"d{pres_thr}.json", Decision(
            threshold=1e-4, presence_source="head", presence_threshold=pres_thr, tta="none",
            selected_on="user", source="user-fixed"))
        out = tmp_path / f"o{pres_thr}"
        r = CliRunner().invoke(app, ["predict", str(run), str(img), "-o", str(out), "--decision", str(dec),
                                     "--device", "cpu"])
        assert r.exit_code == 0, r.output
        row = next(iter(_rows(out).values()))
        h, w = 130, 90
        assert int(row["pixels_above_threshold"]) == h * w
        assert int(row["decision"]) == int(positive)
        assert int(row["fracture_area_px"]) == (h * w if positive else 0)
        with Image.open(out / row["overlay"]) as ov:
            rgb = np.asarray(ov.convert("RGB")).astype(int)
        grey = np.asarray(Image.open(img)).astype(int)
        centre = (slice(h // 3, 2 * h // 3), slice(w // 4, 3 * w // 4))  # away from the label box
        red_shift = (rgb[..., 0] - rgb[..., 1])[centre]
        if positive:
            assert (red_shift > 40).all()  # the whole image is tinted red
        else:
            assert (rgb[..., 0][centre] == grey[centre]).all()  # untouched


def test_labels_show_the_side_of_the_threshold() -> None:
    from fxbench.predict.new_images import decision_label, side_digits

    assert side_digits(0.4312, 0.4349) == ("0.4312", "0.4349")
    assert side_digits(0.43496, 0.435) == ("0.43496", "0.43500")  # rounding is monotone: order kept
    assert decision_label(0.4312, 0.4349, 0) == "fracture: no (p 0.4312 < 0.4349)"
    assert decision_label(0.43501, 0.435, 1) == "fracture: YES (p 0.43501 >= 0.43500)"
    assert decision_label(0.9, 0.5, 1) == "fracture: YES (p 0.90 >= 0.50)"
    assert decision_label(0.18, 0.12, 1, "pred_area") == "fracture: YES (pred_area 0.18 >= 0.12)"  # not a p


def test_no_readable_image_fails_and_writes_nothing(run: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_text("not a JPEG\n")
    (tmp_path / "in" / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "in"), "-o", str(out), "--device", "cpu"])
    assert r.exit_code == 3, r.output
    assert "none of the 2 input files is a readable image" in r.output
    assert not out.exists()
