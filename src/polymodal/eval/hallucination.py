"""Are the objects a caption names really there? CHAIR-style object hallucination and its relatives.

BLEU and CIDEr-D reward the template words a caption shares with its references even when the
objects it names are wrong. These metrics read the objects out of each caption with a vocabulary
and compare them with the objects known to be in the image (Rohrbach et al. 2018, "Object
Hallucination in Image Captioning"):

    chair_i           mentioned objects that are not in the image / mentioned objects (an object is its
                      kind and identity attributes: a colour + shape in Shapes World, sizes aside)
    chair_s           captions with at least one such object / captions
    object_recall     objects of the image the caption names / objects of the image
    exact_objects     captions that name exactly the image's objects, no more, no fewer / captions
    binding_accuracy  mentions whose stated attributes (colour, size) belong to one object of that kind,
                      among mentions of a kind the image has (Shapes World)
    count_accuracy    captions whose object count (a stated "three shapes", else the number of objects
                      named) is the image's (Shapes World)

Two vocabularies are built in: `ShapesVocabulary` (an object is a colour + shape; repeats count, so
"a blue triangle and a blue triangle" for one blue triangle names one that does not exist) and
`CocoVocabulary` (the 80 COCO categories with synonyms and plurals; each caption's set of
categories, as in CHAIR). Ground truth comes from a Shapes World folder's scenes.jsonl
(`read_shapes_objects`) or a COCO instances file (`read_coco_objects`).

Example:
    >>> truth = {"1": [SceneObject("circle", {"colour": "red", "size": "small"})]}
    >>> m = hallucination_metrics({"1": "a small red circle to the left of a blue square"}, truth, ShapesVocabulary())
    >>> m["chair_i"], m["chair_s"], m["object_recall"], m["count_accuracy"]
    (0.5, 1.0, 1.0, 0.0)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import DataError

_WORD = re.compile(r"[a-z]+")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10}


@dataclass(frozen=True)
class SceneObject:
    """One object of an image or one object a caption names: its kind and the attributes known or stated."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def agrees_with(self, other: SceneObject, keys: Sequence[str] | None = None) -> bool:
        """Same kind, and every attribute stated here (of `keys`, default all) has the same value there."""
        return self.name == other.name and all(other.attributes.get(k) == v for k, v in self.attributes.items()
                                               if keys is None or k in keys)


@dataclass(frozen=True)
class Span:
    """Words `start:end` of a caption name `obj` (`count` of them: "two red stars"); `end - 1` is its noun."""

    start: int
    end: int
    obj: SceneObject
    count: int = 1


class ObjectVocabulary(Protocol):
    counts_instances: bool  # True: "a circle and a circle" names two circles; False: a caption's set of kinds
    identity: tuple[str, ...]  # the attributes that make an object another object (a red circle is not a
                               # blue one); the others (size) are details that binding_accuracy checks

    def spans(self, tokens: list[str]) -> list[Span]: ...

    def mentions(self, caption: str) -> list[SceneObject]: ...

    def stated_count(self, caption: str) -> int | None: ...


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def singular(word: str) -> str:
    """English plural -> singular for object nouns ("boxes" -> "box", "knives" -> "knife")."""
    for suffix, repl in (("ives", "ife"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("sses", "ss"), ("uses", "us")):
        if word.endswith(suffix):
            return word[: -len(suffix)] + repl
    if word.endswith("ies") and len(word) > 4:  # "puppies"; but "ties" -> "tie" below
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


class ShapesVocabulary:
    """Shapes World objects: [number] [size] [colour] shape, e.g. "a small red circle", "two blue stars".

    Example:
        >>> [(o.name, dict(o.attributes)) for o in ShapesVocabulary().mentions("two red squares and a circle")]
        [('square', {'colour': 'red'}), ('square', {'colour': 'red'}), ('circle', {})]
    """

    counts_instances = True
    identity = ("colour",)

    def __init__(self, shapes: Sequence[str] | None = None, attributes: Mapping[str, Sequence[str]] | None = None):
        from ..data.shapes import COLOURS, SHAPES, SIZES

        self.shapes = set(shapes or SHAPES)
        groups = attributes or {"colour": tuple(COLOURS), "size": tuple(SIZES)}
        self.attribute_of = {value: name for name, values in groups.items() for value in values}

    def spans(self, tokens: list[str]) -> list[Span]:
        """The object phrases of lower-case caption words, e.g. "a small red circle" -> words 1:4."""
        out = []
        for i, token in enumerate(tokens):
            shape = singular(token)
            if shape not in self.shapes:
                continue
            attributes, j = {}, i - 1
            while j >= 0 and tokens[j] in self.attribute_of and self.attribute_of[tokens[j]] not in attributes:
                attributes[self.attribute_of[tokens[j]]] = tokens[j]
                j -= 1
            repeat = NUMBER_WORDS.get(tokens[j], 1) if j >= 0 and token != shape else 1
            out.append(Span(j + 1, i + 1, SceneObject(shape, attributes), repeat))
        return out

    def mentions(self, caption: str) -> list[SceneObject]:
        return [s.obj for s in self.spans(words(caption)) for _ in range(s.count)]

    def stated_count(self, caption: str) -> int | None:
        """The number in "three shapes" / "two objects", if the caption states one."""
        tokens = words(caption)
        for a, b in zip(tokens, tokens[1:], strict=False):
            if a in NUMBER_WORDS and b in ("shapes", "objects"):
                return NUMBER_WORDS[a]
        return None


# COCO's 80 categories -> the other words captions use for them (singular; plurals are derived).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
               "guy", "lady", "player", "skier", "surfer", "skateboarder", "rider", "baby", "adult", "pedestrian"),
    "bicycle": ("bicycle", "bike", "cycle"), "car": ("car", "taxi", "sedan", "suv"),
    "motorcycle": ("motorcycle", "motorbike", "scooter", "moped"), "airplane": ("airplane", "plane", "jet",
                                                                              "aircraft", "airliner"),
    "bus": ("bus",), "train": ("train", "locomotive"), "truck": ("truck", "lorry", "pickup"),
    "boat": ("boat", "ship", "kayak", "canoe", "sailboat", "yacht"), "traffic light": ("traffic light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"), "stop sign": ("stop sign",), "parking meter": ("parking meter",),
    "bench": ("bench",), "bird": ("bird", "pigeon", "seagull", "duck", "parrot"), "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup"), "horse": ("horse", "pony", "foal"), "sheep": ("sheep", "lamb"),
    "cow": ("cow", "cattle", "bull", "calf"), "elephant": ("elephant",), "bear": ("bear",), "zebra": ("zebra",),
    "giraffe": ("giraffe",), "backpack": ("backpack",), "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"), "tie": ("tie", "necktie"), "suitcase": ("suitcase", "luggage"),
    "frisbee": ("frisbee",), "skis": ("ski",), "snowboard": ("snowboard",), "sports ball": ("ball", "football",
                                                                                             "soccer ball"),
    "kite": ("kite",), "baseball bat": ("baseball bat", "bat"), "baseball glove": ("baseball glove", "mitt"),
    "skateboard": ("skateboard",), "surfboard": ("surfboard",), "tennis racket": ("tennis racket", "racket"),
    "bottle": ("bottle",), "wine glass": ("wine glass",), "cup": ("cup", "mug"), "fork": ("fork",),
    "knife": ("knife",), "spoon": ("spoon",), "bowl": ("bowl",), "banana": ("banana",), "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "sub"), "orange": ("orange",), "broccoli": ("broccoli",),
    "carrot": ("carrot",), "hot dog": ("hot dog",), "pizza": ("pizza",), "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"), "chair": ("chair", "stool"), "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "plant"), "bed": ("bed",), "dining table": ("table", "desk"),
    "toilet": ("toilet",), "tv": ("tv", "television"), "laptop": ("laptop", "computer", "notebook"),
    "mouse": ("mouse",), "remote": ("remote", "controller"), "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone"), "microwave": ("microwave",),
    "oven": ("oven", "stove"), "toaster": ("toaster",), "sink": ("sink",), "refrigerator": ("refrigerator",
                                                                                            "fridge"),
    "book": ("book", "novel"), "clock": ("clock",), "vase": ("vase",), "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy"), "hair drier": ("hair drier", "hair dryer", "hairdryer"),
    "toothbrush": ("toothbrush",),
}
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "teeth": "tooth", "skis": "ski", "scissors": "scissors", "glasses": "glass"}


class CocoVocabulary:
    """COCO categories named in a caption, longest phrase first ("hot dog" is not a dog), plurals folded.

    Example:
        >>> sorted(o.name for o in CocoVocabulary().mentions("Two men eat hot dogs beside a bus"))
        ['bus', 'hot dog', 'person']
    """

    counts_instances = False
    identity = ()

    def __init__(self, synonyms: Mapping[str, Sequence[str]] | None = None):
        self.phrases: dict[tuple[str, ...], str] = {}
        for category, forms in (synonyms or COCO_SYNONYMS).items():
            for form in forms:
                self.phrases[tuple(form.split())] = category
        self.longest = max(len(p) for p in self.phrases)

    def spans(self, tokens: list[str]) -> list[Span]:
        """Every category phrase of lower-case caption words, longest first ("hot dog" before "dog")."""
        tokens = [_IRREGULAR.get(t, singular(t)) for t in tokens]
        out, i = [], 0
        while i < len(tokens):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                category = self.phrases.get(tuple(tokens[i: i + n]))
                if category:
                    out.append(Span(i, i + n, SceneObject(category)))
                    i += n
                    break
            else:
                i += 1
        return out

    def mentions(self, caption: str) -> list[SceneObject]:
        found = {s.obj.name: s.obj for s in reversed(self.spans(words(caption)))}  # first mention kept
        return list(reversed(found.values()))

    def stated_count(self, caption: str) -> int | None:
        return None


# ----------------------------------------------------------------------------- scoring
def count_objects(objects: list[SceneObject], vocabulary: ObjectVocabulary) -> int:
    """How many objects a list holds as the vocabulary counts them: instances, or distinct kinds."""
    return len(objects) if vocabulary.counts_instances else len({o.name for o in objects})


def match_objects(mentions: list[SceneObject], truth: list[SceneObject],
                  vocabulary: ObjectVocabulary) -> tuple[int, int]:
    """(hallucinated mentions, objects of the image that were named).

    With instances, each object of the image can be named once: mentions that state more attributes
    are matched first, so "a red circle" takes the red circle before "a circle" takes any circle.
    """
    if not vocabulary.counts_instances:
        kinds, named = {o.name for o in truth}, {m.name for m in mentions}
        return len(named - kinds), len(kinds & named)
    left = list(truth)
    hallucinated = 0
    for mention in sorted(mentions, key=lambda m: -len(m.attributes)):
        hit = next((k for k, o in enumerate(left) if mention.agrees_with(o, vocabulary.identity)), None)
        if hit is None:
            hallucinated += 1
        else:
            left.pop(hit)
    return hallucinated, len(truth) - len(left)


def hallucination_metrics(captions: Mapping[str, str], truth: Mapping[str, list[SceneObject]],
                          vocabulary: ObjectVocabulary) -> dict[str, float]:
    """The metrics of the module docstring over every caption whose image has known objects.

    Args:
        captions: image id -> the generated caption.
        truth: image id -> the objects in that image (`read_shapes_objects`, `read_coco_objects`).
        vocabulary: reads the objects a caption names.

    Returns:
        chair_i, chair_s, object_recall, exact_objects, binding_accuracy and count_accuracy (the last two
        only for vocabularies that count instances), with mentions and captions (the counts behind them).
    """
    ids = [i for i in captions if i in truth]
    n_mentions = hallucinated = named = objects = exact = with_any = 0
    bound = bindable = counted = 0
    for image_id in ids:
        mentions, objs = vocabulary.mentions(captions[image_id]), truth[image_id]
        bad, hit = match_objects(mentions, objs, vocabulary)
        total = count_objects(objs, vocabulary)
        n_mentions, hallucinated = n_mentions + count_objects(mentions, vocabulary), hallucinated + bad
        named, objects = named + hit, objects + total
        kinds = {o.name for o in objs}
        with_any += bad > 0
        exact += bad == 0 and hit == total
        for m in mentions:
            if m.name in kinds and m.attributes:
                bindable += 1
                bound += any(m.agrees_with(o) for o in objs)
        stated = vocabulary.stated_count(captions[image_id])
        counted += (stated if stated is not None else len(mentions)) == len(objs)
    n = max(len(ids), 1)
    out = {"chair_i": hallucinated / max(n_mentions, 1), "chair_s": with_any / n,
           "object_recall": named / max(objects, 1),
           "exact_objects": exact / n, "mentions": n_mentions, "captions": len(ids)}
    if vocabulary.counts_instances:
        out |= {"binding_accuracy": bound / max(bindable, 1), "count_accuracy": counted / n}
    return out


@dataclass
class ObjectTruth:
    """The objects of each image and the vocabulary that reads captions: what `evaluate` scores truth with.

    Example:
        >>> truth = ObjectTruth({"1": [SceneObject("dog")]}, CocoVocabulary())
        >>> truth.score({"1": "a dog and a cat on a couch"})["chair_i"]
        0.6666666666666666
    """

    objects: Mapping[str, list[SceneObject]]
    vocabulary: ObjectVocabulary

    @classmethod
    def shapes(cls, folder: str | Path) -> ObjectTruth:
        """From a Shapes World folder (its scenes.jsonl)."""
        return cls(read_shapes_objects(folder), ShapesVocabulary())

    @classmethod
    def coco(cls, instances: str | Path) -> ObjectTruth:
        """From a COCO instances file, read with the COCO synonym lists."""
        return cls(read_coco_objects(instances), CocoVocabulary())

    def score(self, captions: Mapping[str, str]) -> dict[str, float]:
        return hallucination_metrics(captions, self.objects, self.vocabulary)

    def errors(self, caption: str, image_id: str) -> tuple[int, int]:
        """(objects named that are not in image `image_id`, objects of it left unnamed) for one caption."""
        objects = self.objects[image_id]
        bad, named = match_objects(self.vocabulary.mentions(caption), objects, self.vocabulary)
        return bad, count_objects(objects, self.vocabulary) - named


# ----------------------------------------------------------------------------- ground truth
def _read_json_lines(path: Path) -> list[dict]:
    rows = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{k}: not JSON ({err.msg}); fix or remove the line") from None
    return rows


def read_shapes_objects(path: str | Path) -> dict[str, list[SceneObject]]:
    """Image id -> objects, from a Shapes World folder (or its scenes.jsonl).

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> f = pathlib.Path(tmp.name) / "scenes.jsonl"
        >>> _ = f.write_text('{"image_id": 7, "objects": [{"shape": "star", "colour": "red", "size": "small"}]}\\n')
        >>> read_shapes_objects(f)["7"][0].attributes["colour"]
        'red'
        >>> tmp.cleanup()
    """
    path = Path(path)
    path = path / "scenes.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no scenes file; pass a Shapes World folder (written by `polymodal data shapes`)")
    out = {}
    for k, row in enumerate(_read_json_lines(path), 1):
        try:
            out[str(row["image_id"])] = [SceneObject(o["shape"], {"colour": o["colour"], "size": o["size"]})
                                         for o in row["objects"]]
        except (KeyError, TypeError):
            raise DataError(f"{path}:{k}: a scene needs image_id and objects with shape, colour and size") from None
    return out


def read_coco_objects(path: str | Path) -> dict[str, list[SceneObject]]:
    """Image id -> the categories annotated in it, from a COCO instances file (instances_*.json).

    Every image listed is included, so an image with no annotations counts as having no objects.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        out: dict[str, list[SceneObject]] = {str(im["id"]): [] for im in data.get("images", [])}
        for k, ann in enumerate(data["annotations"]):
            if ann["category_id"] not in names:
                raise DataError(f"{path}: annotations[{k}]: category_id {ann['category_id']} is not in categories")
            out.setdefault(str(ann["image_id"]), []).append(SceneObject(names[ann["category_id"]]))
    except OSError as err:
        raise DataError(f"{path}: cannot read the instances file ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not a JSON file; pass a COCO instances file (instances_*.json)") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: not a COCO instances file (needs categories and annotations with "
                        f"image_id and category_id)") from None
    return out
