"""Text: tokenizers (word vocabulary, byte-level BPE, a pretrained LM's own), answer normalisation, caption perturbation.

This file is the one place that fills `registry.TOKENIZERS`.

Example:
    >>> from polymodal.registry import TOKENIZERS
    >>> TOKENIZERS.names()
    ['bpe', 'hf', 'word']
"""

from ..registry import TOKENIZERS
from .hf_tokenizer import HFTokenizer
from .tokenizer import BPETokenizer, WordTokenizer

TOKENIZERS.fill({"word": WordTokenizer, "bpe": BPETokenizer, "hf": HFTokenizer})  # hf: a pretrained LM's own
