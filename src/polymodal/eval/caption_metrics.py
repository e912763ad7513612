"""Caption metrics through pycocoevalcap (the coco-caption code): BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

Captions are tokenized exactly as coco-caption does: Stanford's PTB tokenizer (Java), lower-cased,
punctuation tokens removed. Each scorer is pycocoevalcap's own, so the numbers are the ones papers
and the COCO leaderboard report:

- BLEU-n: corpus-level BLEU with the "closest" reference length for the brevity penalty.
- METEOR 1.5 (Java, `-l en -norm`), corpus-level.
- ROUGE-L: LCS F-measure with beta = 1.2, best reference per image, averaged over images.
- CIDEr-D: pycocoevalcap's `Cider` class *is* CIDEr-D (there is no separate `CiderD` in it): TF-IDF
  n-gram vectors (n = 1..4), the hypothesis counts clipped by the reference counts, a Gaussian length
  penalty exp(-delta^2 / (2 * 6^2)), averaged over n-gram sizes and references, times 10. The IDF is
  computed from the references of the images being evaluated (coco-caption's "corpus" mode), so the
  score depends on the evaluation set and is 0 for a single image (every n-gram then has IDF 0).

Java starts in a few hundred milliseconds for the tokenizer, but METEOR loads its paraphrase table
for ~10 s. Measured on 2 CPU cores, 500 captions x 5 references: all metrics 13.7 s (METEOR ~12 s),
`cider_only=True` 0.7 s (200 captions: 0.4 s), `cider_only=True, tokenizer="simple"` 0.3 s. So
validation during training should use `cider_only`; `tokenizer="simple"` (lower-case, split on
non-word characters) needs no Java at all but only approximates PTB (e.g. PTB keeps "a." as one
token at a sentence end), so final reported numbers use the default PTB tokenizer and all metrics.

Example:
    >>> refs = {"1": ["a red circle", "a red round circle"], "2": ["a blue square"], "3": ["a green star"]}
    >>> metrics = caption_metrics({"1": "a red circle", "2": "a blue square", "3": "a green star"},
    ...                           refs, cider_only=True)
    >>> {name: round(value, 2) for name, value in metrics.items()}
    {'cider': 6.75}
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
_JAVA_HINT = "install Java 8 or newer (METEOR and the PTB tokenizer run on it)"
_SIMPLE_WORD = re.compile(r"[^\W_]+")


# ----------------------------------------------------------------------------- tokenization
def simple_tokenize(text: str) -> str:
    """Lower-case and keep runs of letters/digits: a Java-free stand-in for the PTB tokenizer.

    Close to PTB for plain captions; contractions differ ("don't" -> "don t", PTB gives "do n't"),
    and PTB keeps a sentence-final single letter with its period ("... of a." -> "a.").

    Example:
        >>> simple_tokenize("A red circle, left of a BLUE square.")
        'a red circle left of a blue square'
    """
    return " ".join(_SIMPLE_WORD.findall(text.lower()))


def ptb_tokenize(captions: Mapping[Any, list[str]]) -> dict[Any, list[str]]:
    """Tokenize every caption with pycocoevalcap's PTBTokenizer in one Java call.

    Example:
        >>> ptb_tokenize({"1": ["A dog's ball."]})
        {'1': ["a dog 's ball"]}
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The tokenizer keeps one caption per line: any line break inside a caption would shift every
    # later caption onto the wrong image, so all whitespace runs become single spaces first.
    prepared = {key: [{"caption": " ".join(c.split())} for c in caps] for key, caps in captions.items()}
    try:
        tokenized = PTBTokenizer().tokenize(prepared)
    except FileNotFoundError:
        raise ConfigError(f"java not found; {_JAVA_HINT}, or use tokenizer='simple'") from None
    except PermissionError as err:
        raise ConfigError(f"PTB tokenizer cannot write its temp file ({err}); it writes next to "
                          f"pycocoevalcap's jar, so install pycocoevalcap in a writable environment") from None
    if any(len(tokenized.get(key, ())) != len(caps) for key, caps in captions.items()):
        raise ConfigError("the PTB tokenizer returned a different number of captions than it was given; "
                          "check the Java installation or use tokenizer='simple'")
    return tokenized


def _tokenize(captions: dict[Any, list[str]], tokenizer: str) -> dict[Any, list[str]]:
    if tokenizer == "ptb":
        tokenized = ptb_tokenize(captions)
    elif tokenizer == "simple":
        tokenized = {key: [simple_tokenize(c) for c in caps] for key, caps in captions.items()}
    else:
        raise ConfigError(f"caption metrics: tokenizer must be 'ptb' or 'simple', got {tokenizer!r}")
    # METEOR's stdin protocol separates fields with '|||'; a caption containing it would break it.
    return {key: [c.replace("|||", " ").strip() for c in caps] for key, caps in tokenized.items()}


# ----------------------------------------------------------------------------- scorers
@contextlib.contextmanager
def meteor_scorer() -> Iterator[Any]:
    """A pycocoevalcap `Meteor` whose Java process is always stopped on exit (no leaked processes).

    Example:
        METEOR loads its paraphrase table first, ~10 s:

        >>> gts, res = {"1": ["a red circle", "a round red shape"]}, {"1": ["a red circle"]}
        >>> with meteor_scorer() as meteor:  # doctest: +SKIP
        ...     score, per_image = meteor.compute_score(gts, res)
        >>> score  # doctest: +SKIP
        1.0
    """
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except FileNotFoundError:
        raise ConfigError(f"java not found; {_JAVA_HINT}, or pass cider_only=True") from None
    try:
        yield scorer
    except (ValueError, BrokenPipeError) as err:  # Java died: readline() gave b"" or the pipe closed
        raise ConfigError(f"METEOR's Java process stopped ({err!r}); check that `java -Xmx2G -version` "
                          f"works (METEOR asks for 2 GB), or pass cider_only=True") from None
    finally:
        process = scorer.meteor_p
        for stream in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        process.kill()
        process.wait()
        # Meteor.compute_score never releases its lock when it raises, and Meteor.__del__ takes that
        # lock: a fresh one keeps garbage collection from blocking forever after a failure.
        scorer.lock = threading.Lock()


def caption_metrics(results: Mapping[str, str], references: Mapping[str, list[str]], cider_only: bool = False,
                    tokenizer: str = "ptb") -> dict[str, float]:
    """Score one generated caption per image against that image's reference captions.

    Args:
        results: image id -> generated caption. Only these images are scored.
        references: image id -> reference captions; must cover every id in `results`.
        cider_only: compute CIDEr-D only (fast: no METEOR), e.g. for validation during training.
        tokenizer: "ptb" (coco-caption's, Java; use it for reported numbers) or "simple" (no Java).

    Returns:
        {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"} as floats
        (only {"cider"} with `cider_only`). CIDEr-D is on coco-caption's scale (x10, up to ~10).

    Raises:
        DataError: no results, an id without references, or an image with no reference caption.
        ConfigError: Java is missing or fails.

    Example:
        >>> refs = {"1": ["a red circle"], "2": ["a blue square"], "3": ["a green star"]}
        >>> results = {"1": "a red circle", "2": "a blue square", "3": "a green star"}
        >>> caption_metrics(results, refs, cider_only=True, tokenizer="simple")  # "a" is everywhere: IDF 0
        {'cider': 7.5}

        Every metric (METEOR's Java start takes ~10 s):

        >>> m = caption_metrics(results, refs)  # doctest: +SKIP
        >>> round(m["bleu1"], 6), round(m["meteor"], 6), m["cider"]  # doctest: +SKIP
        (1.0, 1.0, 7.5)
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not results:
        raise DataError("caption metrics: no captions to score; caption at least one image")
    unknown = [key for key in results if key not in references]
    if unknown:
        raise DataError(f"caption metrics: {len(unknown)} result ids have no references "
                        f"(first: {unknown[0]!r}); score against the references of the same images")
    empty = [key for key in results if not references[key]]
    if empty:
        raise DataError(f"caption metrics: image {empty[0]!r} has no reference captions; drop it or add some")
    # One tokenizer call for both sides: each Java start costs a few hundred milliseconds.
    texts = {("res", key): [str(caption)] for key, caption in results.items()}
    texts.update({("ref", key): list(references[key]) for key in results})
    tokens = _tokenize(texts, tokenizer)
    res = {key: tokens[("res", key)] for key in results}
    gts = {key: tokens[("ref", key)] for key in results}

    metrics = {"cider": float(Cider().compute_score(gts, res)[0])}
    if cider_only:
        return metrics
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics.update({f"bleu{n}": float(score) for n, score in enumerate(bleu, start=1)})
    with meteor_scorer() as meteor:
        metrics["meteor"] = float(meteor.compute_score(gts, res)[0])
    metrics["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    return {key: metrics[key] for key in METRICS}


# ----------------------------------------------------------------------------- files
def _read_json(path: Path, what: str, shape: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found; check the path")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                        f"{what} files are {shape}") from None


def _id(value: Any) -> str | None:
    """COCO ids are ints or strings; both become strings (as in `CaptionRecord.id`)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        return None
    return str(value)


def load_results(path: str | Path, references: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Read a COCO results file `[{"image_id": ..., "caption": ...}, ...]` into {image id: caption}.

    Args:
        path: the results JSON (what `write_coco_results` and the COCO evaluation server use).
        references: when given, every image_id must be one of its keys.

    Raises:
        DataError: naming the file, the entry index and the fix, for invalid JSON, a top level
            that is not a list, an entry without an image_id or caption, a repeated image_id, or an
            image_id not in `references`.

    Example:
        >>> import json, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name, "results_test.json")
        >>> _ = path.write_text(json.dumps([{"image_id": 391895, "caption": "a man riding a motorcycle "}]))
        >>> load_results(path)
        {'391895': 'a man riding a motorcycle'}
        >>> tmp.cleanup()
    """
    path = Path(path)
    shape = 'a JSON list of {"image_id": ..., "caption": "..."} entries'
    data = _read_json(path, "results", shape)
    if not isinstance(data, list):
        hint = " (this looks like an annotation file: pass it as the references)" if (
            isinstance(data, dict) and "annotations" in data) else ""
        raise DataError(f"{path}: top level is a JSON {type(data).__name__}, not a list; "
                        f"a results file is {shape}{hint}")
    results: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        missing = [k for k in ("image_id", "caption") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DataError(f"{where} has no '{missing[0]}' key; every entry needs 'image_id' and 'caption'")
        key, caption = _id(entry["image_id"]), entry["caption"]
        if key is None:
            raise DataError(f"{where}: image_id {entry['image_id']!r} is not an integer or a non-empty string; "
                            f"use the image ids of the reference file")
        if not isinstance(caption, str):
            raise DataError(f"{where}: caption is a {type(caption).__name__}, not a string; "
                            f"write the caption text")
        if key in first_seen:
            raise DataError(f"{where} repeats image_id {entry['image_id']!r} (first at entry {first_seen[key]}); "
                            f"keep one caption per image")
        if references is not None and key not in references:
            raise DataError(f"{where}: image_id {entry['image_id']!r} is not in the references; "
                            f"evaluate against the reference file (and split) the captions were made for")
        first_seen[key] = i
        results[key] = caption.strip()
    if not results:
        raise DataError(f"{path}: no entries; a results file is {shape}")
    return results


def load_references(path: str | Path, split: str | None = None) -> dict[str, list[str]]:
    """Reference captions {image id: [captions]} from a COCO captions file; image files are not needed.

    Args:
        path: COCO captions JSON (`images` with optional `split`, `annotations` with image_id + caption).
        split: keep only images of this split ("train" also keeps Karpathy's "restval"); images
            without a split are always kept.

    Example:
        >>> import json, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name, "captions.json")
        >>> _ = path.write_text(json.dumps({
        ...     "images": [{"id": 1, "split": "test"}, {"id": 2, "split": "restval"}],
        ...     "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a pet"},
        ...                     {"image_id": 2, "caption": "a cat"}]}))
        >>> load_references(path)
        {'1': ['a dog', 'a pet'], '2': ['a cat']}
        >>> load_references(path, split="train")  # restval counts as train
        {'2': ['a cat']}
        >>> tmp.cleanup()
    """
    path = Path(path)
    shape = "a COCO captions object with an 'annotations' list of {image_id, caption}"
    data = _read_json(path, "references", shape)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: no 'annotations' list; references must be {shape}")
    wanted = {split, "restval"} if split == "train" else {split}
    excluded: set[str] = set()
    for img in data.get("images") or []:
        if split is not None and isinstance(img, dict) and img.get("split") not in (None, "", *wanted):
            excluded.add(str(img.get("id")))
    references: dict[str, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "caption") if not isinstance(ann, dict) or k not in ann]
        if missing:
            raise DataError(f"{path}: annotation {i} has no '{missing[0]}' key; fix or remove it")
        key = _id(ann["image_id"])
        if key is None or not isinstance(ann["caption"], str):
            raise DataError(f"{path}: annotation {i} has a bad image_id or a non-string caption; fix or remove it")
        if key not in excluded:
            references.setdefault(key, []).append(ann["caption"].strip())
    if not references:
        which = f" for split {split!r}" if split is not None else ""
        raise DataError(f"{path}: no reference captions{which}; check the file and the split")
    return references


# ----------------------------------------------------------------------------- retrieval
def retrieval_metrics(similarity: Any, text_image: Any, ks: tuple[int, ...] = (1, 5, 10),
                      text_keys: list[Any] | None = None, relevance: Any | None = None) -> dict[str, float]:
    """Recall@K, median and mean rank for image->text and text->image retrieval, in one pass.

    Image->text: an image's rank is that of its best-ranked relevant caption (a hit at K if any of
    its captions is in the top K). Text->image: a caption's rank is that of its own image. Ties
    count against the query (an irrelevant item scoring exactly as high ranks first), so equal
    scores never make a hit. Recall values are percentages, as retrieval papers report them.

    Args:
        similarity: (I, T) scores of every image against every text (tensor, array or nested lists).
        text_image: (T,) index of the image each text describes.
        ks: the K of Recall@K.
        text_keys: optional (T,) key per text (e.g. the normalized caption). Texts with equal keys
            are interchangeable: a text is then relevant to every image that has a caption with its
            key. Use it where many images share a caption ("there are three shapes"), which strict
            matching cannot resolve by any model.
        relevance: optional (I, T) booleans, True where text j truly describes image i (e.g. from
            scene annotations); replaces both rules above. Each text's own image must be relevant.

    Returns:
        {"i2t_r1", "i2t_r5", "i2t_r10", "i2t_median_rank", "i2t_mean_rank", "t2i_..." (same),
        "r1_mean" (mean of both R@1), "rsum" (sum of every R@K), "images", "texts"}.

    Example:
        >>> sim = [[0.9, 0.1, 0.3], [0.2, 0.8, 0.7]]  # 2 images, texts 0 -> image 0, 1 and 2 -> image 1
        >>> m = retrieval_metrics(sim, [0, 1, 1], ks=(1,))
        >>> m["i2t_r1"], m["t2i_r1"], m["t2i_mean_rank"]
        (100.0, 100.0, 1.0)
    """
    import torch

    sim = torch.as_tensor(similarity, dtype=torch.float32)
    owner = torch.as_tensor(text_image, dtype=torch.long)
    if sim.ndim != 2 or owner.shape != (sim.shape[1],):
        raise DataError(f"retrieval metrics: similarity must be (images, texts) and text_image (texts,); "
                        f"got {tuple(sim.shape)} and {tuple(owner.shape)}")
    n_images, n_texts = sim.shape
    if n_texts == 0 or int(owner.min()) < 0 or int(owner.max()) >= n_images:
        raise DataError("retrieval metrics: every text needs the index of an image in the similarity matrix")
    own = owner[None, :] == torch.arange(n_images)[:, None]  # (I, T)
    if relevance is not None:
        relevant = torch.as_tensor(relevance, dtype=torch.bool)
        if relevant.shape != sim.shape or bool((own & ~relevant).any()):
            raise DataError("retrieval metrics: relevance must be (images, texts) and mark each text's own image")
    elif text_keys is None:
        relevant = own
    else:
        codes = {key: n for n, key in enumerate(dict.fromkeys(text_keys))}
        group = torch.tensor([codes[key] for key in text_keys])
        has = torch.zeros(n_images, len(codes), dtype=torch.bool)
        has[owner, group] = True
        relevant = has[:, group]  # image i has a caption interchangeable with text j
    scored = relevant.any(1)  # images without a caption have no image->text query
    best_text = sim.masked_fill(~relevant, -torch.inf).max(1).values
    i2t = 1 + ((sim >= best_text[:, None]) & ~relevant).sum(1)[scored]
    best_image = sim.masked_fill(~relevant, -torch.inf).max(0).values
    t2i = 1 + ((sim >= best_image[None, :]) & ~relevant).sum(0)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float((ranks <= k).float().mean())
        out[f"{name}_median_rank"] = float(ranks.float().median())
        out[f"{name}_mean_rank"] = float(ranks.float().mean())
    out["r1_mean"] = (out.get("i2t_r1", 0.0) + out.get("t2i_r1", 0.0)) / 2
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    out.update(images=float(int(scored.sum())), texts=float(n_texts))
    return out
