"""Decoder-only image-prefix LM (LLaVA / nanoVLM style): visual tokens prepended to the text of a causal LM.

    images (B, 3, S, S) -> encoder regions (B, N, C)                      any ENCODERS entry (hf_vision: ViT/SigLIP)
      -> projector: pixel shuffle (N -> N / s^2 tokens), MLP            (B, P, D)  visual tokens
    [visual tokens][<bos> w1 ... wn] -> TransformerLM or LlamaLM        logits on the text only

Text positions (GPT-2's learned `wpe`, or a Llama LM's rotary ones) count from 0 after the image, and
the image carries fixed 2D positions of its own (for a rotary LM its tokens sit at -P..-1). So an LM
pretrained on captions alone (task `lm_pretrain`), or a GPT-2 / SmolLM2 folder, sees its text at
exactly the positions it was trained on: "LM first, then connect vision" (docs/pretrained.md).

Generation keeps a KV cache in the decoding state, plain batch-first tensors that the shared
generate.py (greedy, beam, sampling) reorders like any other state: per layer the prefix's
`pk{i}`/`pv{i}` (B, H, P, d) (image + prompt, fixed after the prefill, so beam search never copies
them) and the generated tokens' `k{i}`/`v{i}` (B, H, T, d); `valid` (B, P) (False = prompt padding; only
when there is padding),
`pos` (B,) next text position; `gvalid` (B, T) (False = padding of a row that joined a running batch
later, `join_states`; only then). Each new token then costs one query against the cache instead of a
pass over the whole sequence. With `look_back` (an assistant whose replies point, nn/focus.py) the state also
keeps the `visual` tokens (B, P, D) and `look_x` (B,), the x of a point whose y comes next (-1: none).

Example:
    A trained model (`polymodal train configs/prefix_lm.yaml` writes runs/prefix_lm):

    >>> model = polymodal.load("runs/prefix_lm")  # doctest: +SKIP
    >>> model.caption(["a.png"], beam_size=3)  # doctest: +SKIP
    ['a small red circle to the left of a large blue square']

    An untrained one, to see the decoding state (the KV cache above):

    >>> from PIL import Image
    >>> from polymodal.config import DecoderConfig, EncoderConfig
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
    ...                   decoder=DecoderConfig(hidden_dim=32, num_layers=2, num_heads=4, max_len=8))
    >>> model = PrefixLM(cfg, WordTokenizer.build(["a red circle", "a blue square"]))
    >>> state = model.init_state(model.preprocess([Image.new("RGB", (32, 32))]))
    >>> sorted(state), tuple(state["pk0"].shape), tuple(state["k0"].shape)  # (B, H, P, d), (B, H, T, d)
    (['k0', 'k1', 'nvis', 'pk0', 'pk1', 'pos', 'pv0', 'pv1', 'v0', 'v1'], (1, 4, 4, 8), (1, 4, 0, 8))
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import WEIGHTS_FILE, read_model_dir, read_safetensors, resolve_model_dir
from ..config import ModelConfig, from_dict
from ..data.grounding import location_grid
from ..errors import CheckpointError, ConfigError
from ..generate import GenerationConfig, Hypothesis, StepFn, generate
from ..nn.decoders import State
from ..nn.encoders import build_encoder
from ..nn.focus import cell_lookup, look_back, mark_focus
from ..nn.gpt2 import GPT2LoadReport, is_gpt2_folder, load_gpt2
from ..nn.hf_vision import HFVisionEncoder, VisionTowerDims
from ..nn.llama import LlamaDims, LlamaLM, is_llama_folder, load_llama
from ..nn.projector import ModalityProjector
from ..nn.transformer import TransformerLM, attention_mask, prefix_attention_mask
from ..text.tokenizer import Tokenizer
from .base import SavedModel, forget_initial_weights
from .captioner import Captioner


@dataclass
class PrefixConfig:
    pixel_shuffle: int = 2           # merge s x s neighbouring regions into one visual token (N -> N / s^2)
    projector_hidden: int = 0        # hidden width of the projector MLP; 0 = the LM width
    # Architectures read from Hugging Face folders, saved so that a model reloads without them:
    lm: LlamaDims | None = None      # a Llama-family LM (init_lm_from a Llama folder); None = GPT-2 layout
    vision: VisionTowerDims | None = None  # the hf_vision encoder's tower (filled from encoder.pretrained)
    controls: list[str] = field(default_factory=list)  # caption controls trained with (length, form, focus)
    control_grid: int = 8            # focus points are read on a grid of this many cells a side
    focus_marker: bool = False       # add a learnt vector to the visual token under a focus point (visual prompt)
    bidirectional_prefix: bool = False  # image and prompt attend to each other both ways (PaliGemma); the reply
                                        # stays causal. Training batches then say where it ends ("prefix_len")
    look_back: bool = False          # a point the reply writes (<gxI> <gyJ>) adds the visual token under it to the
                                     # next input (nn/focus.py); needs a tokenizer with location tokens


def _text_positions(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: left-padded rows start counting at their first real token."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


def _rotary_positions(visual: int, text_valid: torch.Tensor) -> torch.Tensor:
    """Positions (B, P + L) of [visual][text] for a rotary LM: the text at 0, 1, ... as for GPT-2's `wpe`,
    the P visual tokens just before it at -P..-1 (rotary attention sees only differences of positions)."""
    before = torch.arange(-visual, 0, device=text_valid.device).expand(len(text_valid), -1)
    return torch.cat([before, _text_positions(text_valid)], dim=1)


class PrefixLM(Captioner):
    """encoder -> projector -> visual tokens + text -> causal TransformerLM; the Captioner user API."""

    architecture = "prefix_lm"

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer, prefix: PrefixConfig | None = None):
        nn.Module.__init__(self)  # not Captioner.__init__: the LM replaces the caption decoder
        self.cfg, self.tokenizer = cfg, tokenizer
        self.prefix_cfg = copy.deepcopy(prefix or PrefixConfig())
        d, vision, llama = cfg.decoder, self.prefix_cfg.vision, self.prefix_cfg.lm
        self.encoder = build_encoder(cfg.encoder) if vision is None else HFVisionEncoder(cfg.encoder, vision)
        self.prefix_cfg.vision = getattr(self.encoder, "dims", None)  # saved: the folder is not needed to reload
        if llama is not None and llama.vocab_size != len(tokenizer):
            raise ConfigError(f"the Llama LM has {llama.vocab_size} token embeddings, the tokenizer {len(tokenizer)} "
                              f"tokens; use the tokenizer that belongs to the LM")
        width = llama.hidden_dim if llama is not None else d.hidden_dim
        self.projector = ModalityProjector(self.encoder.out_dim, width, self.prefix_cfg.pixel_shuffle,
                                           self.prefix_cfg.projector_hidden)
        self.lm = LlamaLM(llama) if llama is not None else TransformerLM(
            len(tokenizer), d.hidden_dim, d.num_layers, d.num_heads, d.max_positions, d.dropout,
            attention_dropout=d.attention_dropout)
        if self.prefix_cfg.focus_marker:
            # zero at first, so a captioner that goes on training with it starts exactly where it was
            self.focus_marker = nn.Parameter(torch.zeros(width))
        if self.prefix_cfg.look_back:
            self.add_look_back()
        self._register_token_lookups()

    def add_look_back(self) -> None:
        """Turn the look-back on (nn/focus.py); its gate starts at zero, so a trained model replies as before."""
        self._location_grid = grid = location_grid(self.tokenizer)
        if not grid:
            raise ConfigError("prefix.look_back needs location tokens in the vocabulary (an assistant trained with "
                              "data.instructions.location_grid > 0)")
        self.prefix_cfg.look_back = True
        llama, device = self.prefix_cfg.lm, next(self.parameters()).device
        width = llama.hidden_dim if llama is not None else self.cfg.decoder.hidden_dim
        self.look_gate = nn.Parameter(torch.zeros(width, device=device))
        self._register_token_lookups()

    def _register_token_lookups(self) -> None:
        """The token id -> grid cell tables of the focus marker and the look-back, sized by the vocabulary: built
        again whenever it grows (InstructionAssistant.add_words)."""
        device = next(self.parameters()).device
        if self.prefix_cfg.focus_marker:
            self.register_buffer("_cell_of_token", cell_lookup(self.tokenizer, self.prefix_cfg.control_grid).to(device),
                                 persistent=False)
        if self.prefix_cfg.look_back:
            self.register_buffer("_location_of_token",
                                 cell_lookup(self.tokenizer, self._location_grid, prefix="<g").to(device),
                                 persistent=False)

    def _embed_text(self, tokens: torch.Tensor, positions: torch.Tensor | None, visual: torch.Tensor | None,
                    before: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, L, D), with what the look-back saw after each written point (none without images)."""
        x = self.lm.embed(tokens, positions)
        if not self.prefix_cfg.look_back or visual is None or not visual.shape[1]:
            return x
        return x + look_back(visual, tokens, before, self._location_of_token, self._location_grid,
                             self.look_gate).to(x.dtype)

    @property
    def trained_controls(self) -> tuple[str, ...]:
        return tuple(self.prefix_cfg.controls)

    @property
    def control_grid(self) -> int:
        return self.prefix_cfg.control_grid

    # ---- training ----------------------------------------------------------------------------
    def visual_tokens(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P, D) visual tokens; with `tokens` (a focus prompt's <xI> <yJ>), the one under that point marked."""
        visual = self.projector(self.encoder(images))
        if tokens is None or not tokens.shape[1] or not self.prefix_cfg.focus_marker:
            return visual
        return mark_focus(visual, tokens, self._cell_of_token, self.prefix_cfg.control_grid, self.focus_marker)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing; without "images" in the batch the LM trains on text alone (task lm_pretrain).

        Returns logits (B, L - 1, V) over the text positions only, and the loss on them. An optional
        "targets" (B, L - 1) replaces the next tokens as targets, <pad> where no loss is taken (the
        instruction assistant learns only its own replies).
        """
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], batch.get("targets", tokens[:, 1:])
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        prefix = self.visual_tokens(batch["images"], inputs) if "images" in batch else None
        x = self._embed_text(inputs, positions, prefix)
        prefix = x[:, :0] if prefix is None else prefix
        # Right padding needs no mask: padding keys come after every real query, so causality hides them.
        positions = torch.arange(-prefix.shape[1], inputs.shape[1], device=inputs.device)
        seq = torch.cat([prefix, x], dim=1)
        if self.prefix_cfg.bidirectional_prefix:
            prompt = batch.get("prefix_len", torch.zeros(len(seq), dtype=torch.long, device=seq.device))
            mask = self._mask(torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device), prefix.shape[1] + prompt)
            hidden, _ = self.lm(seq, mask=mask, positions=positions)
        else:
            hidden, _ = self.lm(seq, is_causal=True, positions=positions)
        logits = self.lm.logits(hidden[:, prefix.shape[1]:])  # no loss on the visual tokens
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=self.tokenizer.pad_id)
        return logits, {"caption_loss": loss, "loss": loss}

    # ---- generation --------------------------------------------------------------------------
    def _prompts(self, prompts: list[list[int]] | None, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Left-pad prompt ids to (B, L), with their validity; no prompts -> (B, 0)."""
        prompts = prompts or [[] for _ in range(rows)]
        if len(prompts) != rows:
            raise ConfigError(f"{len(prompts)} prompts for {rows} images; give one (maybe empty) per image")
        width = max(map(len, prompts))
        ids = torch.full((rows, width), self.tokenizer.pad_id, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            if p:
                ids[r, width - len(p):] = torch.tensor(p, device=device)
        valid = torch.arange(width, device=device)[None] >= torch.tensor(
            [width - len(p) for p in prompts], device=device)[:, None]
        return ids, valid

    def _sequence(self, visual: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Embeddings of [visual][text] (B, P + L, D) and which positions are real (B, P + L)."""
        x = torch.cat([visual, self._embed_text(text, _text_positions(text_valid), visual)], dim=1)
        valid = torch.cat([text_valid.new_ones(visual.shape[:2]), text_valid], dim=1)
        return x, valid

    def init_state(self, images: torch.Tensor, prompts: list[list[int]] | None = None,
                   use_cache: bool = True) -> State:
        """Prefill: encode the images (and optional text prompts, left-padded) into the decoding state.

        Prompts are token ids placed between the image and <bos> (an instruction-style prefix);
        rows of different lengths are left-padded and the padding masked out of every attention.
        Without the cache the state keeps the inputs and every step recomputes the whole sequence.
        """
        text, text_valid = self._prompts(prompts, len(images), images.device)
        visual = self.visual_tokens(images, text)
        if not use_cache:
            width = text_valid.new_full((len(text),), visual.shape[1] + text.shape[1], dtype=torch.long)
            return {"visual": visual, "text": text, "text_valid": text_valid, "prefix_len": width}
        x, valid = self._sequence(visual, text, text_valid)
        _, cache = self.lm(x, mask=self._mask(valid, valid.new_full((len(x),), x.shape[1], dtype=torch.long)),
                           positions=_rotary_positions(visual.shape[1], text_valid))
        state: State = {"pos": text_valid.sum(1), "nvis": text_valid.new_full((len(x),), visual.shape[1], dtype=torch.long)}
        if self.prefix_cfg.look_back:  # what the written points look at, and the x of a point begun
            state["visual"], state["look_x"] = visual, torch.full_like(state["pos"], -1)
        if not bool(valid.all()):  # left-padded prompts: the padding is masked out of every step
            state["valid"] = valid
        for i in range(len(self.lm.h)):
            k, v = cache[f"k{i}"], cache[f"v{i}"]
            state[f"pk{i}"], state[f"pv{i}"] = k, v  # the prefix: fixed from here on
            state[f"k{i}"], state[f"v{i}"] = k[:, :, :0], v[:, :, :0]  # generated tokens, empty so far
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """One token per row against the KV cache: (B,) -> logits (B, V)."""
        x = self._embed_text(tokens[:, None], state["pos"][:, None], state.get("visual"), state.get("look_x"))
        new: State = {"pos": state["pos"] + 1}
        if "look_x" in state:  # the x of this token, if it begins a point
            new["look_x"] = self._location_of_token[tokens, 0]
        prefix = [(state[f"pk{i}"], state[f"pv{i}"]) for i in range(len(self.lm.h))]
        mask = None
        if "gvalid" in state:  # rows that joined later: their generated cache starts with padding
            new["gvalid"] = torch.cat([state["gvalid"], state["gvalid"].new_ones(len(tokens), 1)], dim=1)
            prefix_valid = state["valid"] if "valid" in state else new["gvalid"].new_ones(len(tokens),
                                                                                         prefix[0][0].shape[2])
            mask = torch.cat([prefix_valid, new["gvalid"]], dim=1)[:, None, None, :]
        elif "valid" in state:  # a single new query comes after every cached key: only prefix padding to mask
            mask = state["valid"][:, None, None, :]
        hidden, cache = self.lm(x, mask=mask, cache=state, prefix=prefix, positions=state["pos"][:, None])
        return self.lm.logits(hidden[:, -1]), {**state, **cache, **new}, self._visual_attention(state)

    def _visual_attention(self, state: State) -> torch.Tensor | None:
        """Where the newest token looked among the visual tokens (B, P), None unless asked for: each layer's
        attention of its query to their keys, renormalised over them, averaged over heads and layers (the mean
        over layers puts 90% of the named objects' markers on the object, the last layer alone 46%)."""
        if not self.lm.h[0].attn.keep_query:
            return None
        start = (~state["valid"]).sum(1) if "valid" in state else torch.zeros_like(state["pos"])
        rows = (start[:, None] + torch.arange(int(state["nvis"].max()), device=start.device))[:, None, :, None]
        maps = []
        for i, block in enumerate(self.lm.h):
            keys = state[f"pk{i}"]  # (B, H, prefix, d): [padding][visual][prompt]
            keys = keys.repeat_interleave(block.attn.query.shape[1] // keys.shape[1], 1)  # grouped-query (Llama)
            visual = keys.gather(2, rows.expand(-1, keys.shape[1], -1, keys.shape[3]))  # (B, H, P, d)
            scores = block.attn.query[:, :, -1:] @ visual.transpose(-1, -2) / math.sqrt(keys.shape[3])
            maps.append(scores.softmax(-1).mean(1)[:, 0])  # (B, P)
        return torch.stack(maps).mean(0).float()

    def join_states(self, old: State, new: State) -> State:
        """Rows of `new` after those of `old`, at different steps (continuous batching, `beam_batch`).

        Each cache is left-padded to the longer one with masked keys: `valid` (B, P) over the prefix,
        `gvalid` (B, T) over the generated tokens. Positions are per row (`pos`) already.
        """
        old = self._drop_padding_columns(old)
        out = {name: torch.cat([old[name], new[name]]) for name in ("pos", "nvis", "look_x") if name in old}
        if "visual" in old:
            out["visual"] = torch.cat([old["visual"], new["visual"]])
        for k, v, mask in (("pk", "pv", "valid"), ("k", "v", "gvalid")):
            lengths = old[f"{k}0"].shape[2], new[f"{k}0"].shape[2]
            width = max(lengths)
            if mask in old or mask in new or lengths[0] != lengths[1]:
                masks = [s[mask] if mask in s else torch.ones(len(s["pos"]), n, dtype=torch.bool,
                                                              device=s["pos"].device)
                         for s, n in ((old, lengths[0]), (new, lengths[1]))]
                out[mask] = torch.cat([F.pad(m, (width - m.shape[1], 0), value=False) for m in masks])
            for i in range(len(self.lm.h)):
                for name in (f"{k}{i}", f"{v}{i}"):
                    out[name] = torch.cat([F.pad(s[name], (0, 0, width - s[name].shape[2], 0)) for s in (old, new)])
        return out

    def _decoding(self) -> tuple[StepFn, Callable[[State, State], State] | None]:
        return self.step, self.join_states

    def _drop_padding_columns(self, state: State) -> State:
        """Without the generated-cache columns that are padding in every row (rows that needed them left)."""
        if "gvalid" not in state:
            return state
        first = int(state["gvalid"].any(0).long().argmax()) if bool(state["gvalid"].any()) else state["gvalid"].shape[1]
        if first == 0:
            return state
        state = {**state, "gvalid": state["gvalid"][:, first:]}
        for i in range(len(self.lm.h)):
            state[f"k{i}"], state[f"v{i}"] = state[f"k{i}"][:, :, first:], state[f"v{i}"][:, :, first:]
        return state

    def step_uncached(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """The same step by full recomputation of [visual][prompt][tokens so far]: the reference for tests."""
        text = torch.cat([state["text"], tokens[:, None]], dim=1)
        text_valid = torch.cat([state["text_valid"], state["text_valid"].new_ones(tokens.shape[0], 1)], dim=1)
        x, valid = self._sequence(state["visual"], text, text_valid)
        hidden, _ = self.lm(x, mask=self._mask(valid, state["prefix_len"]),
                            positions=_rotary_positions(state["visual"].shape[1], text_valid))
        return self.lm.logits(hidden[:, -1]), {**state, "text": text, "text_valid": text_valid}, None

    def _mask(self, valid: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        """The attention mask of [visual][text] (B, 1, T, T): causal with padding (`valid` (B, T)); with a
        bidirectional prefix its first `prefix_len` (B,) positions (image and prompt) also see each other."""
        if self.prefix_cfg.bidirectional_prefix:
            return prefix_attention_mask(valid, prefix_len)
        return attention_mask(valid, valid.shape[1])

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None, use_cache: bool = True,
                 prompts: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Captions for normalized images (B, 3, S, S); per image, hypotheses best first.

        Example:
            >>> from PIL import Image
            >>> from polymodal.config import DecoderConfig, EncoderConfig
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
            ...                   decoder=DecoderConfig(hidden_dim=32, num_layers=2, num_heads=4, max_len=8))
            >>> model = PrefixLM(cfg, WordTokenizer.build(["a red circle", "a blue square"]))  # untrained
            >>> images = model.preprocess([Image.new("RGB", (32, 32))] * 2)
            >>> sampling = GenerationConfig(strategy="sample", num_return_sequences=3, seed=0)
            >>> hyps = model.generate(images, sampling)
            >>> [len(per_image) for per_image in hyps]  # per image, its samples best first
            [3, 3]
            >>> caption = model.tokenizer.decode(hyps[0][0].tokens)
        """
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        state = self.init_state(images, prompts, use_cache)
        tok = self.tokenizer
        explain = cfg.return_attention and use_cache  # attention maps come from the cached step
        for block in self.lm.h:
            block.attn.keep_query = explain
        try:
            return generate(self.step if use_cache else self.step_uncached, state, tok.bos_id, tok.eos_id, cfg,
                            suppress_ids=self.unsaid_ids)
        finally:
            for block in self.lm.h:
                block.attn.keep_query, block.attn.query = False, None

    # ---- weights from elsewhere --------------------------------------------------------------
    def load_lm(self, source: str | Path) -> GPT2LoadReport | int:
        """Initialise the LM from a GPT-2 or Llama-family HF folder, or a polymodal prefix_lm / lm_pretrain model.

        Returns the GPT-2 load report, or the number of tensors copied. A Llama folder needs the model
        built with `prefix.lm = read_llama_config(folder)`. The polymodal model must use the same
        tokenizer (the token ids are the embedding rows).
        """
        if is_llama_folder(source):
            if not isinstance(self.lm, LlamaLM):
                raise ConfigError(f"{source}: a Llama folder, but this model's LM is GPT-2 style; build it with "
                                  f"prefix.lm = read_llama_config({source!s})")
            return load_llama(self.lm, source)
        if is_gpt2_folder(source):
            return load_gpt2(self.lm, source)
        folder = resolve_model_dir(source)
        _, tokenizer = read_model_dir(folder)
        if tokenizer is None or tokenizer.to_dict() != self.tokenizer.to_dict():
            raise CheckpointError(f"{folder}: its tokenizer differs from this model's; build the model with "
                                  f"the tokenizer saved in {folder}")
        state = {k.removeprefix("lm."): v for k, v in read_safetensors(folder / WEIGHTS_FILE).items()
                 if k.startswith("lm.")}
        missing, unexpected = self.lm.load_state_dict(state, strict=False)
        if missing or unexpected or not state:
            raise CheckpointError(f"{folder}: its LM does not fit (missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}); use the same model.decoder sizes")
        return len(state)

    # ---- saving ------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        # SavedModel's, not Captioner's: a prefix LM keeps its trained controls in "prefix" (prefix.controls)
        return {**SavedModel.config_dict(self), "prefix": dataclasses.asdict(self.prefix_cfg)}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer, source: str = "config.json") -> PrefixLM:
        cfg = from_dict(ModelConfig, config["model"], f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer, from_dict(PrefixConfig, config.get("prefix", {}), f"{source}:prefix"))
