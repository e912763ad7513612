"""Object annotations in COCO's instances format, as the boxes a scene plan is made from (data/scene_plan.py).

    instances_train2017.json: {"images": [{"id", "width", "height"}], "categories": [{"id", "name"}],
                               "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h] in pixels}]}

Images are read as the centre square of their shorter side (data/images.py), so each box is moved into that square
and measured in its side; a box left with less than `min_visible` of its area in the square is dropped. Record
ids are COCO image ids as text, as the captions reader gives them. Broken annotations are skipped and counted.

Example:
    >>> import json, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> data = {"images": [{"id": 1, "width": 200, "height": 100}], "categories": [{"id": 3, "name": "Traffic light"}],
    ...         "annotations": [{"image_id": 1, "category_id": 3, "bbox": [60, 20, 40, 60]}, {"image_id": 1}]}
    >>> _ = Path(tmp.name, "instances.json").write_text(json.dumps(data))
    >>> report = SkipReport()
    >>> read_instances(f"{tmp.name}/instances.json", report)["1"]
    [BoxedObject(phrase=('traffic', 'light'), cx=0.3, cy=0.5, w=0.4, h=0.6)]
    >>> report.count
    1
    >>> tmp.cleanup()
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import DataError
from ..text.tokenizer import split_words
from .annotation_io import check_file, read_json
from .records import SkipReport
from .scene_plan import BoxedObject


def _square_box(bbox: list, width: float, height: float, min_visible: float) -> BoxedObject | None:
    """A pixel box [x, y, w, h] of a width x height image -> (cx, cy, w, h) in the centre square's side."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    x, y, w, h = (float(v) for v in bbox)
    x0, y0, x1, y1 = max(x, left), max(y, top), min(x + w, left + side), min(y + h, top + side)
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < min_visible * w * h:
        return None
    return BoxedObject((), round(((x0 + x1) / 2 - left) / side, 6), round(((y0 + y1) / 2 - top) / side, 6),
                       round((x1 - x0) / side, 6), round((y1 - y0) / side, 6))


def read_instances(path: str | Path, report: SkipReport | None = None,
                   min_visible: float = 0.5) -> dict[str, list[BoxedObject]]:
    """Image id (text) -> its annotated objects, named by their category ("traffic light" -> ("traffic", "light"))."""
    path = Path(path)
    check_file(path)
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories",
                                                                                        "annotations")):
        raise DataError(f"{path}: not a COCO instances file (needs lists \"images\", \"categories\" and "
                        f"\"annotations\"); pass instances_*.json, not a captions file")
    sizes = {str(im.get("id")): (im.get("width"), im.get("height")) for im in data["images"] if isinstance(im, dict)}
    names = {c.get("id"): tuple(split_words(str(c.get("name", "")))) for c in data["categories"] if isinstance(c, dict)}
    objects: dict[str, list[BoxedObject]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        try:
            image = str(ann["image_id"])
            width, height = sizes[image]
            box = _square_box(ann["bbox"], float(width), float(height), min_visible)
            phrase = names[ann["category_id"]]
        except (KeyError, TypeError, ValueError) as e:
            if report is not None:
                report.skip(f"unreadable object annotation ({type(e).__name__}: {e})", f"{path.name} annotation {i}")
            continue
        if box is not None and phrase:
            objects[image].append(BoxedObject(phrase, box.cx, box.cy, box.w, box.h))
    return dict(objects)
