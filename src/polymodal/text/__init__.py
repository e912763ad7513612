"""Text: tokenizers (word vocabulary, byte-level BPE), answer normalisation, caption perturbation.

This file is the one place that fills `registry.TOKENIZERS`.

Example:
    >>> from polymodal.registry import TOKENIZERS
    >>> TOKENIZERS.names()
    ['bpe', 'word']
"""

from ..registry import TOKENIZERS
from .tokenizer import BPETokenizer, WordTokenizer

TOKENIZERS.fill({"word": WordTokenizer, "bpe": BPETokenizer})
