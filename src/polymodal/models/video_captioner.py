"""Video captioner: event captions, one-sentence summaries and event times from frames and/or sound.

clip -> MediaEncoder -> {"video": (B, T, D), "audio": (B, A, D)} -> + a learned modality embedding each
-> concatenated after a mode token ("events" or "summary") -> memory (B, 1 + T + A, D) -> any caption
decoder of `registry.DECODERS` (the attention LSTM attends over frames and sound alike; feature-level
fusion by token concatenation) -> the one `generate` module.
An event head scores every time step (B, T) for "an event starts here" (trained on the annotated times).

Example:
    >>> import tempfile
    >>> import polymodal
    >>> from polymodal.assets import bundled_model_dir
    >>> from polymodal.data.shapes_video import write_shapes_video
    >>> model = polymodal.load(bundled_model_dir("shapes_video_captioner"))  # or a run: "runs/video_caption"
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = write_shapes_video(f"{tmp.name}/shapes_video", n=3, size=64, progress=False)
    >>> model.describe(folder / "videos/test/test_00000.mp4")["summary"]  # truth: the same
    'three events, an appearance, an exit and an entrance'
    >>> tmp.cleanup()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from ..errors import InputError
from ..generate import GenerationConfig, generate
from ..nn.decoders import build_decoder
from ..nn.media import MODALITIES, MediaConfig, MediaEncoder
from ..text.tokenizer import Tokenizer
from .base import SavedModel

MODES = ("events", "summary")


@dataclass
class VideoCaptionerConfig:
    media: MediaConfig = field(default_factory=MediaConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(
        name="attention_lstm", embed_dim=64, hidden_dim=192, attention_dim=96, dropout=0.1, max_len=40,
        doubly_stochastic=0.0))
    modality_dropout: float = 0.0     # training: chance that a clip loses one (random) modality's tokens, so
                                      # the model cannot lean on one modality alone (needs 2 modalities)
    event_weight: float = 1.0         # weight of the event-time loss
    event_pos_weight: float = 4.0     # event frames are rare: weight positives in the BCE
    event_fields: dict[str, list[str]] = field(default_factory=dict)  # what the clips annotate per event: field ->
                                      # values ("" first = none), e.g. {"kind": ["", "enters", ...], "colour": ...};
                                      # filled from the training clips. Then every time step learns to name the event
                                      # that starts there, and the decoder reads those steps (see EventReader)
    event_layers: int = 2             # transformer layers over the fused time steps of the EventReader
    event_attr_weight: float = 1.0    # weight of the per-step event attribute loss
    read_each_modality: bool = True   # training: the reader also learns from each modality alone (the others
                                      # missing), so the frames learn to see events, not lean on the sound


def load_clip(path: str | Path, media: MediaConfig) -> dict[str, torch.Tensor]:
    """A video or sound file -> an unbatched model input {"frames": (T, 3, S, S), "mel": (M, L), "times"}.

    Only the tracks the file has and the model uses are read: a silent video gives no "mel", a sound file
    (wav, mp3, ...) no "frames"; the model stands in for what is missing (`MediaEncoder.forward`).
    """
    from ..data.audio import fit_length, load_audio, log_mel
    from ..data.images import normalize
    from ..data.video import media_tracks, probe, read_frames

    tracks = media_tracks(path)
    use = [m for m in media.modalities if m in tracks]
    if not use:
        raise InputError(f"{path}: has no {' or '.join(media.modalities)} track, which this model reads; "
                         f"pass a video or sound file")
    out: dict[str, Any] = {}
    duration = None
    if "video" in use:
        duration = probe(path).duration
        clip = read_frames(path, media.frames, media.image_size)
        out["frames"] = normalize(clip.frames.float() / 255.0)
        out["times"] = torch.tensor(clip.times)
    if "audio" in use:
        wave = load_audio(path, media.mel.sample_rate, duration=duration)
        samples = int(round((duration or len(wave) / media.mel.sample_rate) * media.mel.sample_rate))
        out["mel"] = log_mel(fit_length(wave, samples), media.mel)
        if "times" not in out:
            seconds = samples / media.mel.sample_rate
            out["times"] = (torch.arange(media.frames) + 0.5) * seconds / media.frames
    return out


def used_modalities(clip: dict[str, torch.Tensor]) -> list[str]:
    """The modalities a `load_clip` result carries, e.g. ["video"] for a silent video."""
    return [name for name, key in (("video", "frames"), ("audio", "mel")) if key in clip]


class EventReader(nn.Module):
    """The modalities fused per time step -> a transformer over time -> per step, what starts there.

    Each step's token is trained to name the event that starts at it (a cross-entropy per annotated field:
    kind, colour, shape, side, ...; kind "" = nothing starts here), so the tokens the decoder reads say
    which object did what, and a caption that copies them is true. Fields are whatever the training clips
    annotate; a dataset without per-event annotations trains no reader.
    """

    def __init__(self, fields: dict[str, list[str]], dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.fields = dict(fields)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.Linear(dim, sum(len(v) for v in self.fields.values()))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(steps))  # (B, T, D)

    def field_logits(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per field, (B, T, values) logits."""
        sizes = [len(v) for v in self.fields.values()]
        return dict(zip(self.fields, self.heads(hidden).split(sizes, dim=-1), strict=True))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, T, fields): value indices, -100 where a field says nothing (no event, or not annotated)."""
        parts = [F.cross_entropy(logits.flatten(0, 1).float(), labels[..., i].flatten(), ignore_index=-100)
                 for i, logits in enumerate(self.field_logits(hidden).values()) if (labels[..., i] >= 0).any()]
        return torch.stack(parts).mean() if parts else hidden.sum() * 0.0

    def read(self, hidden: torch.Tensor) -> list[list[dict[str, Any]]]:
        """Per clip, per step: {field: most likely value} and "p_event" (1 - P(kind is nothing))."""
        logits = self.field_logits(hidden)
        best = {name: x.argmax(-1).tolist() for name, x in logits.items()}
        first = next(iter(logits))
        p_event = (1 - logits[first].softmax(-1)[..., 0]).tolist()
        return [[{"p_event": round(p_event[b][t], 3),
                  **{name: self.fields[name][best[name][b][t]] for name in logits}}
                 for t in range(hidden.shape[1])] for b in range(hidden.shape[0])]


class VideoCaptioner(SavedModel, nn.Module):
    """Captions and summarises clips, and finds when their events happen; see the module docstring."""

    architecture, config_cls = "video_captioner", VideoCaptionerConfig

    def __init__(self, cfg: VideoCaptionerConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        dim = cfg.media.dim
        self.media = MediaEncoder(cfg.media)
        self.modality_embed = nn.Embedding(len(MODALITIES), dim)
        self.mode_embed = nn.Embedding(len(MODES), dim)
        self.decoder = build_decoder(cfg.decoder, dim, len(tokenizer))
        self.event_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.ood_stats_by_input: dict = {}  # per-modality OOD statistics (eval/ood.py), set by polymodal.load
        self.reader = (EventReader(cfg.event_fields, dim, cfg.media.heads, cfg.event_layers, cfg.media.dropout)
                       if cfg.event_fields else None)
        if self.reader is not None:
            self.events_embed = nn.Parameter(torch.zeros(dim))  # marks the reader's steps in the memory

    @property
    def ood_inputs(self) -> tuple[str, ...]:
        """The modalities with their own out-of-distribution statistics (eval/ood.py `check_clip`)."""
        return tuple(self.cfg.media.modalities)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Modality tokens, and the EventReader's per-step tokens (B, frames, D) when the model has one."""
        tokens = self.media(batch, self.cfg.modality_dropout)
        if self.reader is None:
            return tokens, None
        return tokens, self.reader(self.media.time_tokens(tokens, self.cfg.media.frames))

    def memory(self, tokens: dict[str, torch.Tensor], mode: torch.Tensor,
               events: torch.Tensor | None = None) -> torch.Tensor:
        """Mode token + every modality's tokens (each with its modality embedding) + the event steps: (B, 1 + N, D)."""
        parts = [self.mode_embed(mode)[:, None]]
        for name, x in tokens.items():
            parts.append(x + self.modality_embed.weight[MODALITIES.index(name)])
        if events is not None:
            parts.append(events + self.events_embed)
        return torch.cat(parts, dim=1)

    def event_logits(self, tokens: dict[str, torch.Tensor], events: torch.Tensor | None, steps: int) -> torch.Tensor:
        """(B, steps) scores that an event starts at each step (from the reader's steps when there is one)."""
        x = self.media.time_tokens(tokens, steps) if events is None else F.interpolate(
            events.transpose(1, 2), size=steps, mode="linear", align_corners=False).transpose(1, 2)
        return self.event_head(x).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: media ("frame_features"/"frames", "mel"), "mode" (B,), "tokens" (B, L) = <bos> words <eos>,
        optional "event_targets" (B, T) in {0, 1} and "event_labels" (B, T, fields). Returns caption logits
        and named losses."""
        tokens, events = self.encode(batch)
        words = batch["tokens"]
        logits, aux = self.decoder(self.memory(tokens, batch["mode"], events), words[:, :-1])
        losses = {"caption_loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                  words[:, 1:].reshape(-1), ignore_index=self.tokenizer.pad_id)}
        losses.update(aux["losses"])
        if "event_targets" in batch and self.cfg.event_weight:
            target = batch["event_targets"].float()
            scores = self.event_logits(tokens, events, target.shape[1])
            pos = torch.tensor(self.cfg.event_pos_weight, device=scores.device)
            losses["event_loss"] = self.cfg.event_weight * F.binary_cross_entropy_with_logits(
                scores.float(), target, pos_weight=pos)
        if "event_labels" in batch and self.reader is not None and self.cfg.event_attr_weight:
            labels = batch["event_labels"]
            parts = [self.reader.loss(events, labels)]
            if self.cfg.read_each_modality and len(tokens) > 1:
                for name in tokens:
                    alone = self.media.keep_only(tokens, name)
                    steps = self.media.time_tokens(alone, self.cfg.media.frames)
                    parts.append(self.reader.loss(self.reader(steps), labels))
            losses["event_attr_loss"] = self.cfg.event_attr_weight * sum(parts) / len(parts)
        losses["loss"] = sum(losses.values())
        return logits, losses

    # ---- inference ---------------------------------------------------------------------------
    @torch.inference_mode()
    def caption_batch(self, batch: dict[str, torch.Tensor], mode: str = "events",
                      generation: GenerationConfig | None = None) -> list[str]:
        """Best caption (mode "events") or summary (mode "summary") of every clip in a batch."""
        self.eval()
        return self._caption(self.encode(batch), mode, generation)

    def _caption(self, encoded: tuple[dict[str, torch.Tensor], torch.Tensor | None], mode: str,
                 generation: GenerationConfig | None) -> list[str]:
        """`caption_batch` from the clips' `encode` output (so one encoding serves both modes)."""
        tokens, events = encoded
        b = next(iter(tokens.values())).shape[0]
        memory = self.memory(tokens, torch.full((b,), MODES.index(mode), dtype=torch.long, device=self.device),
                             events)
        cfg = generation or GenerationConfig(strategy="beam", beam_size=3, max_len=self.cfg.decoder.max_len)
        tok = self.tokenizer
        hyps = generate(self.decoder.step, self.decoder.init_state(memory), tok.bos_id, tok.eos_id, cfg,
                        suppress_ids=(tok.pad_id,))
        return [tok.decode(h[0].tokens) for h in hyps]

    @torch.inference_mode()
    def event_probs(self, batch: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """Probability (B, steps) that an event starts at each time step."""
        self.eval()
        return self.event_logits(*self.encode(batch), steps).sigmoid()

    @torch.inference_mode()
    def read_events(self, batch: dict[str, torch.Tensor]) -> list[list[dict[str, Any]]] | None:
        """Per clip, per sampled frame: what the EventReader says starts there (None without a reader)."""
        self.eval()
        _, events = self.encode(batch)
        return None if events is None else self.reader.read(events)

    def describe(self, path: str | Path, beam_size: int = 3) -> dict[str, Any]:
        """Summary, events with start times, and the modalities used, for one video or sound file.

        Each clause of the event caption ("..., then ...") is paired, in time order, with one of the
        most likely event starts (peaks of the event head, at least 2 steps apart).

        Example:
            >>> import tempfile
            >>> import polymodal
            >>> from polymodal.assets import bundled_model_dir
            >>> from polymodal.data.shapes_video import write_shapes_video
            >>> model = polymodal.load(bundled_model_dir("shapes_video_captioner"))
            >>> tmp = tempfile.TemporaryDirectory()
            >>> folder = write_shapes_video(f"{tmp.name}/shapes_video", n=3, size=64, progress=False)
            >>> out = model.describe(folder / "videos/test/test_00000.mp4", beam_size=1)
            >>> {"caption", "events", "modalities", "summary"} <= set(out), sorted(out["events"][0])
            (True, ['event', 'read', 'time'])
            >>> tmp.cleanup()
        """
        return self.describe_clip(load_clip(path, self.cfg.media), beam_size)

    def describe_clip(self, clip: dict[str, torch.Tensor], beam_size: int = 3) -> dict[str, Any]:
        """`describe` of a clip already loaded with `load_clip` (a caller that also checks it decodes it once)."""
        clip = dict(clip)
        times, used = clip.pop("times"), used_modalities(clip)
        batch = {k: v[None].to(self.device) for k, v in clip.items()}
        gen = GenerationConfig(strategy="beam" if beam_size > 1 else "greedy", beam_size=beam_size,
                               max_len=self.cfg.decoder.max_len)
        with torch.inference_mode():  # the clip is encoded once for captions, summary, times and reads
            self.eval()
            encoded = self.encode(batch)
            caption = self._caption(encoded, "events", gen)[0]
            summary = self._caption(encoded, "summary", gen)[0]
            probs = self.event_logits(*encoded, len(times)).sigmoid()[0].cpu()
            reads = None if encoded[1] is None else self.reader.read(encoded[1])
        clauses = [c.strip() for c in caption.split(", then ") if c.strip()]
        peaks = pick_peaks(probs, len(clauses), min_gap=2)
        events = [{"time": round(float(times[i]), 2), "event": c} for i, c in zip(sorted(peaks), clauses, strict=False)]
        if reads is not None and len(reads[0]) == len(times):  # what the reader names at each picked step
            for e, i in zip(events, sorted(peaks), strict=False):
                e["read"] = {k: v for k, v in reads[0][i].items() if v != ""}
        return {"summary": summary, "caption": caption, "modalities": used, "events": events,
                "event_probs": [round(float(p), 3) for p in probs]}


def pick_peaks(scores: torch.Tensor, k: int, min_gap: int = 2) -> list[int]:
    """Indices of the k highest scores, greedily, each at least `min_gap` from those already chosen.

    Example:
        >>> pick_peaks(torch.tensor([0.1, 0.9, 0.8, 0.2, 0.7]), 2)
        [1, 4]
    """
    chosen: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if len(chosen) == k:
            break
        if all(abs(i - j) >= min_gap for j in chosen):
            chosen.append(i)
    return sorted(chosen)
