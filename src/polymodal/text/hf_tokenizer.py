"""A pretrained LM's own Hugging Face tokenizer.json (SmolLM2's, Llama 2's), as a polymodal tokenizer.

polymodal's ids 0-3 play pad, bos, eos and unk. A foreign vocabulary is used as it is when its ids
0-2 are special tokens that text never encodes to: SmolLM2 has `<|endoftext|>` (pad) `<|im_start|>`
(bos) `<|im_end|>` (eos) there, Llama 2 `<unk>` `<s>` `</s>`. A vocabulary with ordinary tokens at
0-2 (GPT-2's, Llama 3's) is refused, since renumbering it would break the LM's embedding rows.
The HF tokenizer is stored whole inside our tokenizer.json as `{"type": "hf", "hf": <its JSON>}`.

Example:
    >>> from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers
    >>> hf = HF(models.BPE())  # a toy byte-level BPE with SmolLM2's first four special tokens
    >>> hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    >>> specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]
    >>> hf.train_from_iterator(["a red circle", "a blue square"] * 3, trainers.BpeTrainer(
    ...     special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    >>> tok = HFTokenizer(hf)
    >>> ids = tok.encode("a red square")
    >>> tok.decode([tok.bos_id, *ids, tok.eos_id, 5])
    'a red square'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .tokenizer import HFBackedTokenizer


class HFTokenizer(HFBackedTokenizer):
    """Any `tokenizers.Tokenizer` whose ids 0-2 are special tokens (pad, bos, eos); see the module doc."""

    kind = "hf"

    def __init__(self, hf: Any, source: str = "tokenizer"):
        special = {i for i, token in hf.get_added_tokens_decoder().items() if token.special}
        roles = ("pad", "bos", "eos")
        if not {0, 1, 2} <= special:
            found = ", ".join(f"{role}={hf.id_to_token(i)!r}" for i, role in enumerate(roles))
            raise CheckpointError(f"{source}: ids 0-2 must be special tokens (pad, bos, eos) for polymodal, got "
                                  f"{found}; this vocabulary cannot be used as it is")
        self.hf = hf

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """A Hugging Face tokenizer.json (as in a SmolLM2 folder)."""
        from tokenizers import Tokenizer as HF

        try:
            hf = HF.from_file(str(path))
        except Exception as err:  # noqa: BLE001 - the Rust side raises a plain Exception on bad files
            raise CheckpointError(f"{path}: not a Hugging Face tokenizer ({err})") from None
        return cls(hf, str(path))
