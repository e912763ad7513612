"""polymodal: a PyTorch toolkit for multimodal language models.

Example:
    >>> import polymodal
    >>> from polymodal.assets import bundled_model_dir
    >>> from polymodal.data.shapes import Scene, ShapeObject, render
    >>> model = polymodal.load(bundled_model_dir())  # any saved model folder, e.g. "runs/attention_lstm"
    >>> model.caption([render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64)])
    ['a large red circle']
"""

from .api import load
from .errors import CheckpointError, ConfigError, DataError, InputError, PolymodalError
from .models.captioner import Captioner

__all__ = ["load", "Captioner", "PolymodalError", "DataError", "ConfigError", "CheckpointError", "InputError"]
__version__ = "0.1.0"
