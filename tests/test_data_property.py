"""Property tests: any annotation file or dataset.csv gives a valid result or a clean DataError."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxbench.data.fracatlas import Warnings, parse_coco, parse_dataset_csv, parse_vgg
from fxbench.errors import DataError

NUM = st.one_of(
    st.integers(-10, 500), st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(),
    st.text(max_size=3), st.none(),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=4), kids, max_size=4)),
    max_leaves=12,
)
COORDS = st.lists(NUM, max_size=9) | JSON
COCO = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": st.one_of(st.integers(0, 3), st.text(max_size=2), st.none()),
                                              "file_name": st.one_of(st.sampled_from(["IMG0000000.jpg", "IMG0000001.jpg"]), JSON),
                                              "width": NUM, "height": NUM}) | JSON, max_size=4),
    "annotations": st.lists(st.fixed_dictionaries({"image_id": st.one_of(st.integers(0, 3), JSON),
                                                   "segmentation": st.lists(COORDS, max_size=3) | JSON}) | JSON, max_size=5),
}) | JSON
VGG = st.dictionaries(
    st.sampled_from(["IMG0000000.jpg", "IMG0000001.jpg", "x"]),
    st.fixed_dictionaries({"filename": st.one_of(st.sampled_from(["IMG0000000.jpg", "IMG0000001.jpg"]), JSON),
                           "regions": st.lists(st.fixed_dictionaries({"shape_attributes": st.fixed_dictionaries({
                               "name": st.sampled_from(["polygon", "rect", 3]), "all_points_x": COORDS, "all_points_y": COORDS}) | JSON}) | JSON,
                               max_size=3) | JSON}) | JSON,
    max_size=3,
) | JSON


def _dump(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=300, deadline=None)
@given(COCO)
def test_any_coco_parses_or_is_ignored(doc: object) -> None:
    w = Warnings()
    result = parse_coco(_dump(doc), "coco.json", w)
    if result is not None:
        polys, sizes = result
        for fractures in polys.values():
            for rings in fractures:
                assert rings and all(len(r) >= 6 and len(r) % 2 == 0 for r in rings)


@settings(max_examples=300, deadline=None)
@given(VGG)
def test_any_vgg_parses_or_is_ignored(doc: object) -> None:
    result = parse_vgg(_dump(doc), "vgg.json", Warnings())
    assert result is None or all(isinstance(k, str) for k in result)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: ("image_id,fractured\r\n" + t).encode()))
def test_any_dataset_csv_parses_or_is_a_clean_error(data: bytes) -> None:
    try:
        rows = parse_dataset_csv(data, "dataset.csv", Warnings())
    except DataError as err:
        assert "\n" not in str(err)
        return
    assert rows and len({r.image_id for r in rows}) == len(rows)


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fxbench.data.synthetic import make_synthetic_archive

    return make_synthetic_archive(tmp_path_factory.mktemp("tiny"), n_images=8, seed=1, scale=0.1, large_fraction=0.0, positive_fraction=0.4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(coco=COCO, vgg=VGG)
def test_prepare_with_generated_annotations_is_valid_or_clean_error(tiny_archive: Path, coco: object, vgg: object) -> None:
    from fxbench.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        arch = Path(tmp) / "a"
        shutil.copytree(tiny_archive, arch)
        ann = arch / "FracAtlas/Annotations"
        (ann / "COCO JSON/COCO_fracture_masks.json").write_bytes(_dump(coco))
        (ann / "VGG JSON/VGG_fracture_masks.json").write_bytes(_dump(vgg))
        try:
            result = prepare(arch, Path(tmp) / "p", cache_sizes=(32,), workers=1)
        except DataError as err:
            assert "\n" not in str(err) and "polygon annotations" in str(err)
            return
        report = result.report
        assert report["images"] == 8 and sum(report["split_counts"].values()) == 8
        assert report["fractured"] <= 8 and (Path(tmp) / "p/manifest.csv").is_file()
