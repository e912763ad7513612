"""polymodal: a PyTorch toolkit for multimodal language models.

Example:
    >>> import polymodal
    >>> model = polymodal.load("runs/attention_lstm")  # doctest: +SKIP
    >>> model.caption(["image.png"])  # doctest: +SKIP
"""

from .api import load
from .errors import CheckpointError, ConfigError, DataError, InputError, PolymodalError
from .models.captioner import Captioner

__all__ = ["load", "Captioner", "PolymodalError", "DataError", "ConfigError", "CheckpointError", "InputError"]
__version__ = "0.1.0"
