"""Data: readers for the standard formats, Shapes World, safe decoding, caches and clips.

This file is the one place that fills `registry.DATASETS` (caption formats), `registry.STREAMS`
(sharded formats read as a stream, for sets too big for memory) and `registry.SAMPLERS` (how frames
are picked from a video).

Example:
    >>> from polymodal.registry import DATASETS, SAMPLERS, STREAMS
    >>> DATASETS.names(), STREAMS.names(), SAMPLERS.names()
    (['coco', 'csv', 'flickr', 'jsonl', 'karpathy'], ['parquet', 'webdataset'], ['fps', 'keyframes', 'uniform'])
"""

from ..registry import DATASETS, SAMPLERS, STREAMS
from . import formats, line_formats, stream_formats, video

DATASETS.fill({
    "coco": formats.read_coco,
    "karpathy": formats.read_karpathy,
    "flickr": line_formats.read_flickr,
    "jsonl": line_formats.read_jsonl,
    "csv": line_formats.read_csv,
})
STREAMS.fill({
    "webdataset": stream_formats.WebDatasetStream,
    "parquet": stream_formats.ParquetStream,
})
SAMPLERS.fill({
    "uniform": video.sample_uniform,
    "fps": video.sample_fps,
    "keyframes": video.sample_keyframes,
})
