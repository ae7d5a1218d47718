"""Load an `fxbench export yolo` folder with Ultralytics' own dataset code (run in a scratch venv).

    /path/to/yolo-venv/bin/python scripts/verify_yolo_export.py OUT/data.yaml [--test-labels]

Uses ultralytics.data.utils.check_det_dataset (reads data.yaml) and YOLODataset (verifies every
image/label pair, as training does) for each split; prints the counts and exits 1 when a split
has a corrupt image or label, or the box counts differ from case_mapping.csv. Never a project
dependency: fxbench does not import ultralytics.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main(argv: list[str]) -> int:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    yaml_path = Path(argv[0]).resolve()
    test_labels = "--test-labels" in argv
    data = check_det_dataset(str(yaml_path), autodownload=False)
    with open(yaml_path.parent / "case_mapping.csv", newline="") as fh:
        mapping = list(csv.DictReader(fh))
    report: dict[str, dict[str, int]] = {}
    ok = data["nc"] == 1 and data["names"] == {0: "fracture"}
    for split in ("train", "val", "test"):
        ds = YOLODataset(img_path=data[split], data=data, task="detect", imgsz=64, augment=False, cache=False)
        want = [r for r in mapping if r["split"] == split]
        n_boxes = sum(len(lb["bboxes"]) for lb in ds.labels)
        want_boxes = sum(int(r["boxes"]) for r in want) if (split != "test" or test_labels) else 0
        report[split] = {"images": len(ds.im_files), "labels": len(ds.labels), "boxes": n_boxes,
                         "expected_images": len(want), "expected_boxes": want_boxes}
        ok &= len(ds.im_files) == len(want) and len(ds.labels) == len(want) and n_boxes == want_boxes
        item = ds[0]  # one full sample through Ultralytics' transforms
        ok &= tuple(item["img"].shape[1:]) == (64, 64)
    print(json.dumps({"ok": bool(ok), "splits": report}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
