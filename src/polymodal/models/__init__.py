"""The saved architectures: each can `save_pretrained(dir)` and be rebuilt by `polymodal.load(dir)`.

This file is the one place that fills `registry.MODELS` (the `architecture` key of a config.json).

Example:
    >>> from polymodal.registry import MODELS
    >>> MODELS.names()
    ['asr', 'assistant', 'captioner', 'chat', 'dual_encoder', 'image_tokenizer', 'prefix_lm', 'refining_captioner', 'scene_image_generator', 'spoken_vqa', 'text_to_image', 'token_image_generator', 'video_captioner', 'video_qa', 'vqa']
"""

from ..registry import MODELS
from .asr import SpeechRecognizer
from .assistant import InstructionAssistant
from .captioner import Captioner
from .chat import Assistant
from .dual_encoder import DualEncoder
from .image_tokenizer import ImageTokenizer
from .prefix_lm import PrefixLM
from .refine import RefiningCaptioner
from .scene_image_generator import SceneImageGenerator
from .spoken_vqa import SpokenVQAModel
from .text_to_image import TextToImage
from .token_image_generator import TokenImageGenerator
from .video_captioner import VideoCaptioner
from .video_qa import VideoQA
from .vqa import VQAModel

MODELS.fill({
    "asr": SpeechRecognizer,
    "assistant": InstructionAssistant,
    "captioner": Captioner,
    "chat": Assistant,
    "dual_encoder": DualEncoder,
    "image_tokenizer": ImageTokenizer,
    "prefix_lm": PrefixLM,
    "refining_captioner": RefiningCaptioner,
    "scene_image_generator": SceneImageGenerator,
    "spoken_vqa": SpokenVQAModel,
    "text_to_image": TextToImage,
    "token_image_generator": TokenImageGenerator,
    "video_captioner": VideoCaptioner,
    "video_qa": VideoQA,
    "vqa": VQAModel,
})

__all__ = ["Assistant", "Captioner", "DualEncoder", "ImageTokenizer", "InstructionAssistant", "PrefixLM",
           "RefiningCaptioner", "SceneImageGenerator", "SpeechRecognizer", "SpokenVQAModel", "TextToImage", "TokenImageGenerator", "VQAModel",
           "VideoCaptioner", "VideoQA"]
