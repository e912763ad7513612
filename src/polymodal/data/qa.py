"""Question-answer data: a VQA-style JSON / JSONL reader, the answer vocabulary and a torch Dataset.

A file holds one record per question, either as JSON Lines (one object per line) or as a JSON array
(or an object with a "questions", "data" or "annotations" array). A record has

    image     path of the image, relative to `images` (default: the file's folder)
    question  the question text
    answer    one reference answer (str), or
    answers   several: strings, or {"answer": str} objects as in VQA v2 annotations
    optional: id / question_id, image_id, type (or answer_type / question_type), split

Shapes World's qa.jsonl is such a file. Bad records (missing or empty fields, a line that is not
JSON, an image that is not on disk) are skipped and counted in a `SkipReport`; a bad file raises one
`DataError` line naming the file and the fix.

Example:
    >>> import tempfile
    >>> from polymodal.data.shapes import write_shapes_world
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=20, image_size=32, progress=False)
    >>> records = read_qa(folder / "qa.jsonl", split="train")
    >>> records[0].question, records[0].answers, records[0].type
    ('what colour is the hexagon?', ['blue'], 'colour')
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError, InputError
from ..text.answers import answer_scores, normalize_answer
from ..text.tokenizer import Tokenizer
from .images import normalize
from .records import ALLOW_OUTSIDE_HINT, ESCAPES_ROOT, SkipReport, resolve_image_path

log = logging.getLogger(__name__)
_ARRAY_KEYS = ("questions", "data", "annotations")
MAX_TEXT_CHARS = 2000  # longer input is cut before tokenizing; questions are far shorter


@dataclass
class QARecord:
    """One question about one image, with its reference answers.

    Example:
        >>> QARecord(id="7", image="/d/a.png", question="what colour is the star?", answers=["red"]).answers
        ['red']
    """

    id: str
    image: str
    question: str
    answers: list[str]
    type: str | None = None
    split: str | None = None


def _answers(row: dict[str, Any]) -> list[str] | str:
    """The stripped reference answers of a row, or a reason why there are none."""
    if "answers" in row:
        raw = row["answers"]
        if not isinstance(raw, list):
            return "'answers' is not a list"
        items = [a.get("answer") if isinstance(a, dict) else a for a in raw]
    elif "answer" in row:
        items = [row["answer"]]
    else:
        return "missing 'answer' / 'answers'"
    answers = [a.strip().lower() for a in items if isinstance(a, str) and a.strip()]
    return answers or "no non-empty answer"


def _rows(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, row) pairs of a JSON or JSONL file; file-level problems raise DataError."""
    if not path.is_file():
        what = "is a directory; pass the JSON/JSONL file inside it" if path.is_dir() else "not found; check the path"
        raise DataError(f"{path}: question file {what}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); re-save it as UTF-8") from None
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if not _looks_like_jsonl(text):
                raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the "
                                f"file, or write one JSON object per line (JSONL)") from None
        else:
            yield from _array_rows(path, data)
            return
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {n} column {e.colno}", None


def _array_rows(path: Path, data: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        key = next((k for k in _ARRAY_KEYS if isinstance(data.get(k), list)), None)
        if key is None and "question" not in data:
            raise DataError(f"{path}: a JSON object without a 'questions' array; write a list of "
                            f"{{image, question, answer}} objects (or one object per line)")
        data = data[key] if key else [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of question records, got {type(data).__name__}")
    yield from ((f"record {i}", row) for i, row in enumerate(data))


def _looks_like_jsonl(text: str) -> bool:
    """Several lines, the first a JSON object: JSON Lines with a bad line, not a broken JSON document."""
    lines = [line for line in text.split("\n") if line.strip()]
    try:
        return len(lines) > 1 and isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def read_qa(path: str | Path, images: str | Path | None = None, split: str | None = None,
            report: SkipReport | None = None, check_images: bool = True,
            allow_outside_root: bool = False) -> list[QARecord]:
    """Read a VQA-style JSON or JSONL question file into `QARecord`s.

    Args:
        path: the .json or .jsonl file.
        images: folder that image paths are relative to (default: the file's folder).
        split: keep only records of this split (records without a split are kept); None keeps all.
        report: where skipped records are counted; without one a summary is logged as a warning.
        check_images: skip records whose image file is not on disk.
        allow_outside_root: accept image paths that leave `images` ("../x.jpg", absolute paths);
            by default such records are skipped and counted.

    Returns:
        The good records, in file order.

    Raises:
        DataError: the file is missing, not UTF-8, not JSON, has the wrong structure or no good record.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Path(tmp.name, "photos").mkdir()
        >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/photos/a.png")
        >>> _ = Path(tmp.name, "my_vqa.jsonl").write_text(
        ...     '{"image": "a.png", "question": "how many?", "answers": [{"answer": "two"}, "2"]}\\n'
        ...     '{"image": "gone.png", "question": "how many?", "answer": "one"}\\n')
        >>> report = SkipReport()
        >>> records = read_qa(f"{tmp.name}/my_vqa.jsonl", images=f"{tmp.name}/photos", report=report)
        >>> [r.answers for r in records]
        [['two', '2']]
        >>> dict(report.reasons)
        {'image file not found': 1}
        >>> tmp.cleanup()
    """
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    own = report if report is not None else SkipReport(source=str(path))
    seen_images: dict[str, bool] = {}
    out: list[QARecord] = []
    for where, row in _rows(path):
        problem, record = _record(row, root, where, allow_outside_root)
        if record is not None and check_images:
            if record.image not in seen_images:
                seen_images[record.image] = Path(record.image).is_file()
            problem = None if seen_images[record.image] else "image file not found"
            where = where if problem is None else f"{where} ({record.image})"
        if problem:
            own.skip(problem, f"{path} {where}")
            continue
        if split is None or record.split in (None, split):
            out.append(record)
    if report is None and own.count:
        log.warning(own.summary())
    if not out:
        raise DataError(f"{path}: no usable question records{f' in split {split!r}' if split else ''}; "
                        f"each needs image, question and answer/answers: check the file and its fields ({own.summary()})")
    return out


def _record(row: Any, root: Path, where: str, allow_outside_root: bool = False) -> tuple[str | None, QARecord | None]:
    if row is None:
        return "invalid JSON", None
    if not isinstance(row, dict):
        return "record is not a JSON object", None
    image, question = row.get("image"), row.get("question")
    if not isinstance(image, str) or not image.strip():
        return "missing 'image'", None
    if not isinstance(question, str) or not question.strip():
        return "missing or empty 'question'", None
    answers = _answers(row)
    if isinstance(answers, str):
        return answers, None
    kind = next((row[k] for k in ("type", "answer_type", "question_type") if isinstance(row.get(k), str)), None)
    split = row.get("split") if isinstance(row.get("split"), str) else None
    qid = row.get("id", row.get("question_id", where))
    resolved = resolve_image_path(root, image.strip(), allow_outside_root)
    if resolved is None:
        return f"{ESCAPES_ROOT} ({image.strip()!r}); {ALLOW_OUTSIDE_HINT}", None
    return None, QARecord(id=str(qid), image=str(Path(resolved).resolve()), question=question.strip(),
                          answers=answers, type=kind, split=split)


def encode_text(tokenizer: Tokenizer, text: Any, max_len: int, what: str = "question") -> list[int]:
    """Token ids of a question or message: empty -> InputError, too long -> truncated, unknown -> <unk>.

    Example:
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tok = WordTokenizer.build(["what colour is the circle?"])
        >>> encode_text(tok, "what colour is the zorblax?", max_len=20)  # 3 = <unk>
        [8, 5, 6, 7, 3]
    """
    if not isinstance(text, str):
        raise InputError(f"the {what} must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"empty {what}; ask something about the image, e.g. 'what colour is the circle?'")
    ids = tokenizer.encode(text[:MAX_TEXT_CHARS], max_len=max_len)
    if not ids:
        raise InputError(f"the {what} {text[:40]!r} has no words; ask in words, e.g. 'how many shapes are there?'")
    return ids


def build_answer_vocab(records: Iterable[QARecord], max_answers: int = 1000, min_count: int = 1) -> list[str]:
    """The most frequent answers (ties alphabetical), one spelling per normalised answer.

    Example:
        >>> build_answer_vocab([QARecord("1", "a.png", "q?", ["yes", "Yes", "no"])])
        ['yes', 'no']
    """
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for rec in records:
        for a in rec.answers:
            key = normalize_answer(a)
            counts[key] += 1
            spelling.setdefault(key, a)
    ranked = sorted((k for k, n in counts.items() if n >= min_count and k), key=lambda k: (-counts[k], k))
    return [spelling[k] for k in ranked[:max_answers]]


def answer_targets(answers: list[str], references: list[str]) -> torch.Tensor:
    """Soft target scores (len(answers),): the VQA accuracy each vocabulary answer would get."""
    scores = answer_scores(references)
    return torch.tensor([scores.get(normalize_answer(a), 0.0) for a in answers], dtype=torch.float32)


class QADataset(Dataset):
    """Items {"image", "question", "targets", "index"} over records whose images live in a bank.

    `images` maps a record's image index to a tensor: a uint8 image (3, S, S) or precomputed region
    features (N, C); `collate_qa` turns the former into "images" and the latter into "image_features".
    Records whose answers are all outside the vocabulary get no gradient and are skipped and counted.
    """

    def __init__(self, records: list[QARecord], image_index: list[int], images: Callable[[int], Any],
                 tokenizer: Tokenizer, answers: list[str], max_len: int, report: SkipReport | None = None,
                 train: bool = True):
        self.images, self.tokenizer, self.answers, self.max_len = images, tokenizer, answers, max_len
        self.records, self.image_index, self.targets = [], [], []
        for rec, idx in zip(records, image_index, strict=True):
            target = answer_targets(answers, rec.answers)
            if train and not target.any():
                if report is not None:
                    report.skip("answer not in the answer vocabulary", f"{rec.id}: {rec.answers[:3]}")
                continue
            self.records.append(rec)
            self.image_index.append(idx)
            self.targets.append(target)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        image = self.images(self.image_index[i])
        if image is None:
            return None
        ids = self.tokenizer.encode(self.records[i].question, max_len=self.max_len) or [self.tokenizer.unk_id]
        return {"image": image, "question": torch.tensor(ids), "targets": self.targets[i], "index": i}


def collate_qa(items: list[dict[str, Any] | None], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Batch items: "images" (normalised) or "image_features", "tokens" (B, T) question ids, right-padded,
    "targets" (B, A), "index" (B,). Items that failed to load are dropped and counted in "skipped"."""
    good = [it for it in items if it is not None]
    batch: dict[str, torch.Tensor] = {"skipped": torch.tensor(len(items) - len(good))}
    if not good:
        return batch
    images = torch.stack([it["image"] for it in good])
    if images.dtype == torch.uint8:
        batch["images"] = normalize(images)
    else:
        batch["image_features"] = images.float()
    length = max(len(it["question"]) for it in good)
    tokens = torch.full((len(good), length), pad_id, dtype=torch.long)
    for r, it in enumerate(good):
        tokens[r, : len(it["question"])] = it["question"]
    # "tokens", not "questions": the Trainer skips batches that carry neither images nor tokens
    batch["tokens"] = tokens
    batch["targets"] = torch.stack([it["targets"] for it in good])
    batch["index"] = torch.tensor([it["index"] for it in good])
    return batch


class ImageBank:
    """The distinct images of some records, decoded once: as uint8 images, or as cached encoder features.

    `bank[i]` is image i (uint8 (3, S, S)) or, when `encode` is given, its features (N, C) computed
    once in batches; a frozen encoder then costs nothing per training step. Images that fail to load
    are skipped and counted; `bank.index` maps each good path to its row.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from polymodal.config import EncoderConfig
        >>> from polymodal.nn.encoders import build_encoder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> a, gone = f"{tmp.name}/a.png", f"{tmp.name}/gone.png"
        >>> Image.new("RGB", (8, 8)).save(a)
        >>> encoder = build_encoder(EncoderConfig(name="small_cnn", width=8))
        >>> bank = ImageBank([a, a, gone], image_size=32, encode=encoder, progress=False)
        >>> len(bank), bank[bank.index[a]].shape  # one distinct image loaded: its (regions, channels)
        (1, torch.Size([16, 32]))
        >>> tmp.cleanup()
    """

    def __init__(self, paths: Iterable[str], image_size: int, encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 report: SkipReport | None = None, progress: bool = True, batch_size: int = 128):
        from .datasets import ImageStore
        from .records import CaptionRecord

        unique = list(dict.fromkeys(paths))
        store = ImageStore([CaptionRecord(id=p, image=p, captions=[]) for p in unique], image_size, preload=True,
                           report=report, progress=progress)
        self.index = {rec.image: i for i, rec in enumerate(store.records)}
        images = [store.cache[i] for i in range(len(store.records))]
        self.images = torch.stack(images) if images else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
        self.features: torch.Tensor | None = None
        if encode is not None:
            self.features = encode_images(encode, self.images, batch_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.features[i] if self.features is not None else self.images[i]

    def keep(self, records: list[Any]) -> tuple[list[Any], list[int]]:
        """The records whose image loaded, and their rows in the bank."""
        good = [r for r in records if r.image in self.index]
        return good, [self.index[r.image] for r in good]


@torch.inference_mode()
def encode_images(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  batch_size: int = 128) -> torch.Tensor:
    """Run `encode` over uint8 images (B, 3, S, S) in batches on its own device; float32 features on CPU."""
    module = encode if isinstance(encode, torch.nn.Module) else None
    device = next(module.parameters()).device if module is not None else torch.device("cpu")
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    out = [encode(normalize(images[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    if module is not None:
        module.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
