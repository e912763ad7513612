"""Calibrated confidence: expected calibration error, reliability tables and temperature scaling.

A classifier's softmax probability is calibrated when, of the answers it gives with probability ~0.8,
~80% are right. Modern networks trained with cross-entropy are over-confident; temperature scaling (Guo et
al. 2017, "On Calibration of Modern Neural Networks", section 4.2) divides the logits by one scalar T > 0
fitted on validation data to minimise the negative log-likelihood. It never changes which answer is best
(argmax is unchanged), only how sure the model says it is.

Expected calibration error (ECE, Naeini et al. 2015): the confidences are split into `bins` equal-width
bins over [0, 1]; ECE is the mean over bins of |accuracy - mean confidence|, weighted by each bin's share.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> logits = 2.0 * torch.randn(4000, 5, generator=g)
    >>> labels = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)  # softmax(logits) is calibrated
    >>> t = fit_temperature(3.0 * logits, labels)  # over-confident by a factor of 3
    >>> round(t)
    3
    >>> conf, pred = (3.0 * logits / t).softmax(-1).max(-1)
    >>> ece(conf, pred == labels) < 0.03
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError

Values = torch.Tensor | Sequence[float] | Sequence[bool]


def _vectors(confidences: Values, correct: Values, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    conf = torch.as_tensor(confidences, dtype=torch.float64).detach().flatten().cpu()
    hit = torch.as_tensor(correct, dtype=torch.float64).detach().flatten().cpu()
    if conf.numel() != hit.numel() or conf.numel() == 0 or bins < 1:
        raise ConfigError(f"calibration: need as many confidences as correctness values (got {conf.numel()} and "
                          f"{hit.numel()}), at least one of each, and bins >= 1 (got {bins})")
    return conf.clamp(0.0, 1.0), hit


def _bin_index(conf: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of each confidence: bin b holds (b/bins, (b+1)/bins]; 0 goes into the first bin."""
    return (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)


def reliability_table(confidences: Values, correct: Values, bins: int = 15) -> list[dict[str, float]]:
    """The non-empty confidence bins: {"low", "high", "count", "confidence" (mean), "accuracy" (mean)} each.

    `correct` is 1/0 (or True/False) per answer, or a soft score in [0, 1] such as VQA accuracy.

    Example:
        >>> reliability_table([0.95, 0.9, 0.55, 0.6], [1, 1, 0, 1], bins=2)
        [{'low': 0.5, 'high': 1.0, 'count': 4, 'confidence': 0.75, 'accuracy': 0.75}]
        >>> [row["count"] for row in reliability_table([0.1, 0.95, 0.9], [0, 1, 0], bins=2)]
        [1, 2]
    """
    conf, hit = _vectors(confidences, correct, bins)
    index = _bin_index(conf, bins)
    rows = []
    for b in range(bins):
        keep = index == b
        n = int(keep.sum())
        if n:
            rows.append({"low": round(b / bins, 4), "high": round((b + 1) / bins, 4), "count": n,
                         "confidence": round(float(conf[keep].mean()), 4), "accuracy": round(float(hit[keep].mean()), 4)})
    return rows


def ece(confidences: Values, correct: Values, bins: int = 15) -> float:
    """Expected calibration error: sum over bins of (share of answers) * |accuracy - mean confidence|.

    Example:
        >>> ece([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0])  # says 90%, is right 75%: off by 0.15
        0.15
        >>> ece([1.0, 0.5, 0.5], [1, 1, 0])  # perfectly calibrated
        0.0
    """
    conf, hit = _vectors(confidences, correct, bins)
    index = _bin_index(conf, bins)
    n = torch.bincount(index, minlength=bins).double()
    gap = torch.bincount(index, weights=conf - hit, minlength=bins).abs()  # |sum(conf - hit)| per bin
    return round(float(gap.sum() / n.sum()), 12)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` (N,) under softmax(logits (N, K) / temperature).

    Example:
        >>> round(nll(torch.zeros(3, 4), torch.tensor([0, 1, 2])), 4) == round(math.log(4), 4)
        True
    """
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def _golden_log_search(loss: Callable[[float], float], low: float, high: float, steps: int) -> float:
    """The T in [low, high] minimising a unimodal `loss(T)`: golden-section search on log T."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(math.exp(c)), loss(math.exp(d))
    for _ in range(steps):  # each step shrinks the bracket by 0.618: 80 steps reach float precision
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(math.exp(d))
    return math.exp((a + b) / 2)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0,
                    steps: int = 80) -> float:
    """The temperature T in [low, high] that minimises the NLL of `labels` (N,) under softmax(`logits` (N, K) / T).

    A golden-section search on log T: the NLL is convex in 1/T (a log-sum-exp of linear functions of it),
    so it has one minimum along log T and the search finds it without a learning rate or a start point.
    T > 1 softens an over-confident model, T < 1 sharpens an under-confident one; when every answer is
    right (or wrong) the optimum lies at a bound, which is returned.

    Raises:
        ConfigError: shapes that do not match, no rows, a label outside [0, K), or non-finite logits.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
        >>> t = fit_temperature(logits, torch.tensor([0, 0, 0, 1]))  # right 3 times in 4: p should be 0.75
        >>> round(float((logits[0] / t).softmax(-1)[0]), 3)
        0.75
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ConfigError(f"fit_temperature: logits must be (N, K) and labels (N,) with N > 0 "
                          f"(got {tuple(logits.shape)} and {tuple(labels.shape)})")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    if bool(((y < 0) | (y >= z.shape[1])).any()) or not bool(torch.isfinite(z).all()):
        raise ConfigError(f"fit_temperature: labels must lie in [0, {z.shape[1]}) and logits be finite; "
                          f"drop rows without a known answer before fitting")
    return _golden_log_search(lambda t: nll(z, y, t), low, high, steps)


def binary_nll(confidences: Values, correct: Values) -> float:
    """Mean negative log-likelihood of right/wrong (1/0) under the stated confidences (clamped to [1e-6, 1 - 1e-6]).

    Example:
        >>> round(binary_nll([0.5, 0.5], [1, 0]), 4) == round(math.log(2), 4)
        True
    """
    conf, hit = _vectors(confidences, correct, 1)
    conf = conf.clamp(1e-6, 1 - 1e-6)
    return float(-(hit * conf.log() + (1 - hit) * (1 - conf).log()).mean())


def fit_confidence_temperature(confidence_at: Callable[[float], torch.Tensor], correct: Values, low: float = 0.05,
                               high: float = 20.0, steps: int = 80) -> float:
    """The temperature T in [low, high] whose confidences `confidence_at(T)` (N,) best predict `correct` (N,).

    For answers that are not one choice among K classes, such as a generated reply whose confidence is the
    product of its tokens' probabilities under logits / T: T minimises the NLL of right/wrong (`binary_nll`)
    with the same golden-section search as `fit_temperature`.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]] * 4)
        >>> t = fit_confidence_temperature(lambda t: (logits / t).softmax(-1)[:, 0], [1, 1, 1, 0])
        >>> round(float((logits[0] / t).softmax(-1)[0]), 3)
        0.75
    """
    return _golden_log_search(lambda t: binary_nll(confidence_at(t), correct), low, high, steps)


def choose_threshold(confidences: Values, correct: Values, accuracy: float = 0.5) -> float:
    """The confidence below which answers are right less often than `accuracy`: the t that maximises
    sum over answers with confidence >= t of (correct - accuracy). Answering at t or above gains on balance;
    below it, saying "not sure" does. Returns a confidence that occurs (0.0 when every answer is worth giving).

    Example:
        >>> choose_threshold([0.9, 0.8, 0.6, 0.4, 0.3, 0.2], [1, 1, 1, 0, 1, 0])
        0.6
        >>> choose_threshold([0.9, 0.2], [1, 1])
        0.0
    """
    conf, hit = _vectors(confidences, correct, 1)
    order = conf.argsort(descending=True)
    gain = (hit[order] - accuracy).cumsum(0)  # answering everything down to each confidence
    best = int(gain.argmax())
    if float(gain[best]) <= 0:
        return 1.0  # nothing is worth answering: every reply is "not sure"
    if best == len(order) - 1:
        return 0.0
    return round(float(conf[order][best]), 6)


def confidence_split(confidences: Values, correct: Values, threshold: float) -> dict[str, float | None]:
    """How answers below `threshold` ("not sure") compare with the rest: their share and each group's accuracy.

    Example:
        >>> confidence_split([0.9, 0.8, 0.3, 0.2], [1, 1, 1, 0], threshold=0.5)
        {'not_sure_share': 0.5, 'accuracy_confident': 1.0, 'accuracy_not_sure': 0.5}
    """
    conf, hit = _vectors(confidences, correct, 1)
    unsure = conf < threshold

    def mean(mask: torch.Tensor) -> float | None:
        return round(float(hit[mask].mean()), 4) if bool(mask.any()) else None

    return {"not_sure_share": round(float(unsure.double().mean()), 4), "accuracy_confident": mean(~unsure),
            "accuracy_not_sure": mean(unsure)}


def reliability_markdown(rows: list[dict[str, float]]) -> str:
    """A reliability table (see `reliability_table`) as a markdown table.

    Example:
        >>> print(reliability_markdown(reliability_table([0.9, 0.7], [1, 0], bins=2)))
        | confidence bin | answers | mean confidence | accuracy |
        |---|---:|---:|---:|
        | 0.50-1.00 | 2 | 0.800 | 0.500 |
    """
    lines = ["| confidence bin | answers | mean confidence | accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {r['low']:.2f}-{r['high']:.2f} | {r['count']} | {r['confidence']:.3f} | {r['accuracy']:.3f} |"
              for r in rows]
    return "\n".join(lines)


__all__ = ["binary_nll", "choose_threshold", "confidence_split", "ece", "fit_confidence_temperature", "fit_temperature",
           "nll", "reliability_markdown", "reliability_table"]
