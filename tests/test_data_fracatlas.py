"""Layout reader: dataset.csv, annotations, decoding, rasterization (fxbench.data.fracatlas)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from fxbench.data.decode import ImageDecodeError, decode_image
from fxbench.data.fracatlas import (
    Warnings,
    check_polygon_bounds,
    choose_polygon_source,
    parse_coco,
    parse_dataset_csv,
    parse_vgg,
    parse_voc,
    parse_yolo,
    pixel_hash,
    rasterize,
    validate_polygon,
)
from fxbench.errors import DataError

HEADER = "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# rasterization


def test_rasterize_square_known_pixel_count() -> None:
    # corners (2,2)..(6,6) filled with outline: rows 2..6 x cols 2..6 = 25 pixels
    mask = rasterize([(2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0)], height=10, width=12)
    assert mask.shape == (10, 12)
    assert int(mask.sum()) == 25
    assert mask[2:7, 2:7].all() and not mask[:2].any() and not mask[:, 7:].any()


def test_rasterize_rounds_vertices_and_unions() -> None:
    a = (1.4, 1.4, 3.6, 1.4, 3.6, 3.6, 1.4, 3.6)  # rounds to (1,1)..(4,4): 16 px
    b = (3.0, 3.0, 5.0, 3.0, 5.0, 5.0, 3.0, 5.0)  # 9 px, overlaps a in (3..4, 3..4) = 4 px
    mask = rasterize([a, b], 8, 8)
    assert int(mask.sum()) == 16 + 9 - 4


def test_rasterize_thin_polygon_never_vanishes() -> None:
    sliver = (1.0, 1.0, 8.0, 1.2, 1.0, 1.4)  # degenerate after rounding: a line
    assert int(rasterize([sliver], 5, 10).sum()) == 8


# --------------------------------------------------------------------------------------
# polygons and sources


@pytest.mark.parametrize(
    ("xs", "ys", "ok"),
    [
        ([0, 5, 5], [0, 0, 5], True),
        ([0, 5], [0, 0], False),  # < 3 points
        ([0, 0, 0, 0], [1, 1, 1, 1], False),  # < 3 distinct
        ([0, 5, float("nan")], [0, 0, 5], False),
        ([0, 5, 5], [0, 0], False),  # length mismatch
        ([0, "5", 5], [0, 0, 5], False),  # wrong type
        ([0, True, 5], [0, 0, 5], False),  # bool is not a coordinate
        ("0,5,5", [0, 0, 5], False),
    ],
)
def test_validate_polygon(xs, ys, ok) -> None:  # type: ignore[no-untyped-def]
    poly, why = validate_polygon(xs, ys)
    assert (poly is not None) == ok
    assert (why is None) == ok


def test_polygon_bounds() -> None:
    inside = (0.0, 0.0, 10.0, 0.0, 10.0, 20.0)
    assert check_polygon_bounds(inside, height=20, width=10) is None
    assert check_polygon_bounds((0.0, 0.0, 11.5, 0.0, 5.0, 5.0), 20, 10) is None  # within 2 px tolerance
    assert "outside" in (check_polygon_bounds((0.0, 0.0, 50.0, 0.0, 5.0, 5.0), 20, 10) or "")


@pytest.mark.parametrize(
    ("counts", "fc", "boxes", "expected"),
    [
        ({"coco": 2, "vgg": 2}, 2, {}, "coco"),
        ({"coco": 2, "vgg": 1}, 2, {}, "coco"),
        ({"coco": 1, "vgg": 2}, 2, {}, "vgg"),  # the source that agrees wins
        ({"coco": 1, "vgg": 3}, 2, {}, "coco"),  # none agrees: closest, ties by preference
        ({"coco": None, "vgg": 1}, 1, {}, "vgg"),
        ({"coco": 1, "vgg": 2}, None, {"voc": 2, "yolo": 2}, "vgg"),  # boxes as the reference
        ({"coco": 1, "vgg": 2}, None, {}, "vgg"),  # no reference: the largest
        ({"coco": None, "vgg": None}, 1, {}, None),
    ],
)
def test_choose_polygon_source(counts, fc, boxes, expected) -> None:  # type: ignore[no-untyped-def]
    assert choose_polygon_source(counts, fc, boxes) == expected


# --------------------------------------------------------------------------------------
# dataset.csv


def test_csv_bom_crlf_and_values() -> None:
    data = ("\ufeff" + HEADER + "\r\nIMG1.jpg,0,1,0,0,0,0,1,1,2,1,0,0\r\nIMG2.jpg,1,0,0,0,0,0,0,0,0,0,1,0\r\n").encode()
    w = Warnings()
    rows = parse_dataset_csv(data, "dataset.csv", w)
    assert [r.image_id for r in rows] == ["IMG1.jpg", "IMG2.jpg"]
    assert rows[0].fractured == 1 and rows[0].meta["fracture_count"] == 2 and rows[0].meta["leg"] == 1
    assert rows[1].index == 1
    assert len(w) == 0


def test_csv_missing_extra_columns_and_duplicates_are_warnings() -> None:
    data = b"image_id,fractured,notes\nA.jpg,1,x\nA.jpg,0,y\nB.jpg,yes,z\n,1,q\n"
    w = Warnings()
    rows = parse_dataset_csv(data, "dataset.csv", w)
    assert [r.image_id for r in rows] == ["A.jpg", "B.jpg"]
    assert rows[0].fractured == 1  # the first duplicate row is kept
    assert rows[1].fractured is None  # 'yes' is not 0/1
    assert rows[0].meta["hand"] is None
    assert w.counts == {"csv_missing_columns": 1, "csv_extra_columns": 1, "csv_duplicate_id": 1, "csv_bad_value": 1, "csv_bad_image_id": 1}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"id,fractured\r\nA.jpg,1\r\n", "no image_id column"),
        (HEADER.encode() + b"\r\n", "no data rows"),
        (b"\xff\xfe\x00\x01bad", "not UTF-8"),
    ],
)
def test_csv_fatal_problems_are_one_line_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(DataError) as err:
        parse_dataset_csv(data, "x/dataset.csv", Warnings())
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------
# annotation files


def test_parse_coco_counts_fractures_and_skips_malformed() -> None:
    doc = {
        "images": [{"id": 1, "file_name": "A.jpg", "width": 10, "height": 8}, {"id": 2}, "junk"],
        "annotations": [
            {"image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"image_id": 1, "segmentation": [[1, 1, 5, 1]]},  # < 3 points
            {"image_id": 1, "segmentation": [[1, 1, 5, 1, float("nan"), 2]]},
            {"image_id": 1, "segmentation": {"counts": "RLE", "size": [8, 10]}},
            {"image_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5], [6, 6, 7, 6, 7, 7]]},  # one fracture, two rings
        ],
    }
    w = Warnings()
    polys, sizes = parse_coco(json.dumps(doc).encode(), "coco.json", w)  # type: ignore[misc]
    assert len(polys["A.jpg"]) == 2 and len(polys["A.jpg"][1]) == 2
    assert sizes == {"A.jpg": (10, 8)}
    assert w.counts["coco_bad_image"] == 2
    assert w.counts["coco_bad_polygon"] == 2 and w.counts["coco_bad_annotation"] >= 3


def test_parse_vgg_dict_or_list_regions() -> None:
    doc = {
        "A.jpg123": {"filename": "A.jpg", "regions": {"0": {"shape_attributes": {"name": "polygon", "all_points_x": [1, 5, 5, 1], "all_points_y": [1, 1, 5, 1]}}}},
        "B.jpg": {"filename": "B.jpg", "regions": [
            {"shape_attributes": {"name": "rect", "x": 1}},
            {"shape_attributes": {"name": "polygon", "all_points_x": [1, 2], "all_points_y": [1, 2]}},
            {"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 9, 2]}},
        ]},
        "C.jpg": "junk",
    }
    w = Warnings()
    polys = parse_vgg(json.dumps(doc).encode(), "vgg.json", w)
    assert polys is not None
    assert len(polys["A.jpg"]) == 1 and len(polys["B.jpg"]) == 1
    assert w.counts == {"vgg_bad_region": 1, "vgg_bad_polygon": 1, "vgg_bad_entry": 1}


@pytest.mark.parametrize("blob", [b"{not json", b"[]", b'"x"', b'{"images": 3, "annotations": []}'])
def test_unusable_coco_is_ignored_with_warning(blob: bytes) -> None:
    w = Warnings()
    assert parse_coco(blob, "coco.json", w) is None
    assert w.counts.get("coco_invalid") == 1


def test_voc_and_yolo_counts() -> None:
    w = Warnings()
    assert parse_voc(b"<annotation><object/><object/></annotation>", "a.xml", w) == 2
    assert parse_voc(b"<annotation><object>", "b.xml", w) is None
    assert parse_yolo(b"0 0.5 0.5 0.1 0.1\n\n0 0.2 0.2 0.1 0.1\nbad line here x y\n0 1\n", "a.txt", w) == 2
    assert w.counts == {"voc_invalid": 1, "yolo_bad_line": 2}


# --------------------------------------------------------------------------------------
# decoding


def test_exif_rotation_places_mask_on_the_displayed_feature() -> None:
    """Annotations live in the EXIF-transposed frame: decode must apply the orientation."""
    display = np.full((60, 40), 20, np.uint8)  # H=60, W=40 as shown to the annotator
    display[10:20, 25:35] = 230  # a bright patch the polygon marks
    poly = (25.0, 10.0, 34.0, 10.0, 34.0, 19.0, 25.0, 19.0)
    for orientation, store in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = Image.fromarray(display).transpose(store)
        buf = io.BytesIO()
        stored.save(buf, format="JPEG", quality=98, exif=exif.tobytes())
        dec = decode_image(buf.getvalue(), "rot.jpg")
        assert dec.orientation == orientation
        assert dec.pixels.shape == (60, 40)
        mask = rasterize([poly], *dec.pixels.shape)
        assert dec.pixels[mask].mean() > 200  # mask sits on the bright patch
        assert dec.pixels[~mask].mean() < 40


def test_truncated_jpeg_is_decoded_and_flagged() -> None:
    rng = np.random.default_rng(0)
    data = _jpeg(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    cut = decode_image(data[: len(data) * 6 // 10], "cut.jpg")
    assert cut.truncated and cut.strict_failed and cut.pixels.shape == (64, 64)
    eoi = decode_image(data[:-2], "eoi.jpg")
    assert eoi.truncated
    whole = decode_image(data, "ok.jpg")
    assert not whole.truncated and not whole.strict_failed


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "P", "LA", "I;16", "I", "1", "F"])
def test_every_mode_becomes_8bit_grey(mode: str) -> None:
    base = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1))  # 12 x 25
    im = Image.fromarray(base).convert("RGB").convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        im = Image.fromarray(base.astype(np.uint16) * 257)  # full 16-bit range
    elif mode in ("I", "F"):
        im = Image.fromarray(base.astype(np.int32 if mode == "I" else np.float32)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    dec = decode_image(buf.getvalue(), f"x.{fmt.lower()}")
    assert dec.pixels.dtype == np.uint8 and dec.pixels.shape == (12, 25)
    if mode not in ("1", "P"):
        assert abs(int(dec.pixels[0, 20]) - 200) <= 3, mode  # intensities kept
    assert dec.pixels[0, -1] > dec.pixels[0, 0]


def test_twelve_bit_images_stay_visible() -> None:
    base = (np.arange(0, 4096, 16, dtype=np.uint16)).reshape(16, 16)
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="PNG")
    dec = decode_image(buf.getvalue(), "x12.png")
    assert dec.pixels.max() == 254 or dec.pixels.max() == 255


@pytest.mark.parametrize(("data", "fragment"), [(b"", "0-byte"), (b"hello, not an image", "not an image"), (b"\xff\xd8\xff\xe0" + b"\x00" * 30, "")])
def test_non_images_raise_decode_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, "bad.jpg")
    assert fragment in str(err.value)


def test_pixel_hash_ignores_container_bytes() -> None:
    arr = np.arange(64 * 48, dtype=np.uint32).reshape(64, 48).astype(np.uint8)
    a = decode_image(_jpeg(arr), "a")
    b = decode_image(_jpeg(arr, comment=b"another file, same pixels"), "b")
    assert pixel_hash(a.pixels) == pixel_hash(b.pixels)
    assert pixel_hash(a.pixels) != pixel_hash(a.pixels.T.copy())
    assert not math.isnan(float(a.pixels.mean()))
