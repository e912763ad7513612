"""Which token may come next in a scene plan (data/scene_plan.py): decoding that only writes well-formed plans.

    <bgK>  (<obj> word{1..max_phrase} <wA> <hB> <xC> <yD>){1..max_objects}  <eos>

Each row of the decoding state carries where it is in this grammar (`plan_phase`), how many objects and
phrase words it has written and the width and height just chosen, as tensors, so `generate` reorders and
repeats them like the KV cache. A layout box per row (`plan_box`, x0 y0 x1 y1 in [0, 1]; the whole image by
default) rules out every centre whose box would leave it, so "draw it here" is kept exactly: constrained
decoding, as banned words keep a caption from saying a word.

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> from polymodal.data.scene_plan import plan_tokens
    >>> tok = WordTokenizer(["<pad>", "<bos>", "<eos>", "<unk>", "red", "circle", *plan_tokens(4, 2)])
    >>> grammar = PlanGrammar(tok, grid=4, max_objects=2, max_phrase=2)
    >>> state = grammar.start(1)
    >>> [tok.words[i] for i in grammar.allowed(state)[0].nonzero().flatten()]
    ['<bg0>', '<bg1>']
    >>> for word in ["<eos>", "<bg1>", "<obj>", "red"]:  # the caption's <eos> comes first, as in decoding
    ...     state = grammar.advance(state, torch.tensor([tok.index[word]]))
    >>> [tok.words[i] for i in grammar.allowed(state)[0].nonzero().flatten()]
    ['red', 'circle', '<w0>', '<w1>', '<w2>', '<w3>']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.scene_plan import background_token, coordinate_token
from ..nn.state import State
from ..text.tokenizer import Tokenizer

# phases: what was written last
START, NEXT, PHRASE, WIDTH, HEIGHT, CENTRE_X, DONE = range(7)
# token kinds
OTHER, BACKGROUND, OBJECT, EOS, WORD, W, H, X, Y = range(9)


class PlanGrammar:
    """The plan grammar over one tokenizer's ids; `start` / `advance` keep the state, `allowed` masks the logits."""

    def __init__(self, tokenizer: Tokenizer, grid: int, max_objects: int, max_phrase: int):
        index, vocab = tokenizer.index, len(tokenizer)  # type: ignore[attr-defined]
        self.grid, self.max_objects, self.max_phrase = grid, max_objects, max_phrase
        kind = torch.full((vocab,), WORD, dtype=torch.long)
        value = torch.zeros(vocab, dtype=torch.long)
        for special in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.unk_id):
            kind[special] = OTHER
        kind[tokenizer.eos_id], kind[index["<obj>"]] = EOS, OBJECT
        for word, i in index.items():
            coordinate = coordinate_token(word)
            if background_token(word) is not None:
                kind[i] = BACKGROUND
            elif coordinate is not None:
                kind[i], value[i] = (W, H, X, Y)["whxy".index(coordinate[0])], coordinate[1]
        self.kind, self.value = kind, value
        # what each phase may be followed by; the counts and the box narrow it in `allowed`
        follows = {START: (BACKGROUND,), NEXT: (OBJECT, EOS), PHRASE: (WORD, W), WIDTH: (H,), HEIGHT: (X,),
                   CENTRE_X: (Y,), DONE: (EOS,)}
        self.follows = torch.zeros(7, 9, dtype=torch.bool)
        for phase, kinds in follows.items():
            self.follows[phase, list(kinds)] = True
        # phase after writing a token of each kind, from each phase (a caption's <eos> leaves START as it is)
        self.after = torch.arange(7)[:, None].repeat(1, 9)
        self.after[START, BACKGROUND] = NEXT
        self.after[NEXT, OBJECT], self.after[NEXT, EOS] = PHRASE, DONE
        self.after[PHRASE, W], self.after[WIDTH, H], self.after[HEIGHT, X], self.after[CENTRE_X, Y] = (
            WIDTH, HEIGHT, CENTRE_X, NEXT)

    def start(self, rows: int, box: Sequence[float] | None = None, device: torch.device | None = None) -> State:
        """The grammar's part of a fresh decoding state for `rows` rows, with a layout box (x0, y0, x1, y1)."""
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        box_t = torch.tensor(box if box is not None else (0.0, 0.0, 1.0, 1.0), device=device).expand(rows, 4)
        return {"plan_phase": zeros + START, "plan_objects": zeros, "plan_words": zeros, "plan_w": zeros,
                "plan_h": zeros, "plan_box": box_t.clone()}

    def advance(self, state: State, tokens: torch.Tensor) -> State:
        """The state after each row wrote `tokens` (B,)."""
        kind, value = self.kind.to(tokens.device)[tokens], self.value.to(tokens.device)[tokens]
        phase = state["plan_phase"]
        return {**state, "plan_phase": self.after.to(tokens.device)[phase, kind],
                "plan_objects": state["plan_objects"] + ((phase == NEXT) & (kind == OBJECT)).long(),
                "plan_words": torch.where(kind == OBJECT, 0, state["plan_words"] + (kind == WORD).long()),
                "plan_w": torch.where(kind == W, value, state["plan_w"]),
                "plan_h": torch.where(kind == H, value, state["plan_h"])}

    def allowed(self, state: State) -> torch.Tensor:
        """(B, V) True where a token may come next."""
        phase, device = state["plan_phase"], state["plan_phase"].device
        kind, value = self.kind.to(device), self.value.to(device)
        ok = self.follows.to(device)[phase][:, kind]  # (B, V)
        room = state["plan_objects"] < self.max_objects
        ok &= ~((kind == OBJECT)[None] & ~room[:, None])
        ok &= ~((kind == EOS)[None] & ((phase == NEXT) & (state["plan_objects"] == 0))[:, None])
        ok &= ~((kind == WORD)[None] & (state["plan_words"] >= self.max_phrase)[:, None])
        ok &= ~((kind == W)[None] & (state["plan_words"] == 0)[:, None])
        box = state["plan_box"]
        ok &= ~((kind == X)[None] & ~self._centres_inside(box[:, 0], box[:, 2], state["plan_w"], value))
        ok &= ~((kind == Y)[None] & ~self._centres_inside(box[:, 1], box[:, 3], state["plan_h"], value))
        return ok

    def _centres_inside(self, lo: torch.Tensor, hi: torch.Tensor, extent: torch.Tensor,
                        centres: torch.Tensor) -> torch.Tensor:
        """(B, V): whether a centre at raster step `centres` keeps an object of `extent` steps within [lo, hi]
        (half a step of slack); where no centre does, the one nearest the middle of [lo, hi]."""
        g = self.grid
        centre, half = (centres[None].float() + 0.5) / g, ((extent[:, None].float() + 1) / g) / 2
        fits = (centre - half >= lo[:, None] - 0.5 / g) & (centre + half <= hi[:, None] + 0.5 / g)
        middle = ((lo + hi) / 2 * g).long().clamp(0, g - 1)[:, None]
        nearest = (centres[None] == middle)
        return torch.where(fits.any(1, keepdim=True), fits, nearest)
