"""Training: the loop, its state, distributed helpers, shared pretraining, and one file per task.

This file is the one place that fills `registry.TASKS` (the `task:` key of a YAML config).

Example:
    >>> from polymodal.registry import TASKS
    >>> TASKS.names()
    ['asr', 'assistant', 'assistant_rl', 'captioning', 'chat', 'contrastive', 'lm_pretrain', 'prefix_lm', 'refine', 'scst', 'spoken_vqa', 'text_to_image', 'text_to_image_scenes', 'text_to_image_tokens', 'video_caption', 'video_qa', 'vqa']
"""

from ..registry import TASKS
from . import (
    asr,
    assistant,
    captioning,
    chat,
    contrastive,
    lm_pretrain,
    prefix_lm,
    refine,
    reply_rl,
    scst,
    spoken_vqa,
    text_to_image,
    text_to_image_scenes,
    text_to_image_tokens,
    video,
    vqa,
)

TASKS.fill({
    "asr": asr.train_asr,
    "assistant": assistant.train_assistant,
    "assistant_rl": reply_rl.train_assistant_rl,
    "captioning": captioning.train_captioner,
    "chat": chat.train_chat,
    "contrastive": contrastive.train_contrastive,
    "lm_pretrain": lm_pretrain.train_lm,
    "prefix_lm": prefix_lm.train_prefix_lm,
    "refine": refine.train_refiner,
    "scst": scst.train_scst,
    "spoken_vqa": spoken_vqa.train_spoken_vqa,
    "text_to_image": text_to_image.train_text_to_image,
    "text_to_image_scenes": text_to_image_scenes.train_text_to_image_scenes,
    "text_to_image_tokens": text_to_image_tokens.train_text_to_image_tokens,
    "video_caption": video.train_video_caption,
    "video_qa": video.train_video_qa,
    "vqa": vqa.train_vqa,
})
