"""The saved architectures: each can `save_pretrained(dir)` and be rebuilt by `polymodal.load(dir)`.

This file is the one place that fills `registry.MODELS` (the `architecture` key of a config.json).

Example:
    >>> from polymodal.registry import MODELS
    >>> MODELS.names()
    ['asr', 'captioner', 'chat', 'dual_encoder', 'prefix_lm', 'refining_captioner', 'video_captioner', 'video_qa', 'vqa']
"""

from ..registry import MODELS
from .asr import SpeechRecognizer
from .captioner import Captioner
from .chat import Assistant
from .dual_encoder import DualEncoder
from .prefix_lm import PrefixLM
from .refine import RefiningCaptioner
from .video_captioner import VideoCaptioner
from .video_qa import VideoQA
from .vqa import VQAModel

MODELS.fill({
    "asr": SpeechRecognizer,
    "captioner": Captioner,
    "chat": Assistant,
    "dual_encoder": DualEncoder,
    "prefix_lm": PrefixLM,
    "refining_captioner": RefiningCaptioner,
    "video_captioner": VideoCaptioner,
    "video_qa": VideoQA,
    "vqa": VQAModel,
})

__all__ = ["Assistant", "Captioner", "DualEncoder", "PrefixLM", "RefiningCaptioner", "SpeechRecognizer", "VQAModel",
           "VideoCaptioner", "VideoQA"]
