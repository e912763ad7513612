"""Does the video captioner know when a clip is unlike its training clips? (issue 22, video and sound side)

    OMP_NUM_THREADS=1 python bench/ood_video.py [--model DIR]

The video captioner (default: the bundled one) carries one Mahalanobis statistic per modality, fitted at the
end of `polymodal train configs/video_caption.yaml` on its training clips' time-pooled video tokens and audio
tokens, each threshold at the 98th percentile of the validation clips (eval/ood.py `fit_clip_stats`). One per
modality, so that a silent video is checked on its frames and a sound file on its sound. Scored here: the 200
held-out Shapes World test clips (n=1200, seed 0) against outside inputs made here, frames and sound apart:
noise, solid colours, still pictures of the project's other renderer (data/outside.py), and the test clips
themselves inverted, rotated or blurred (where the line falls); white and pink noise, pure tones, chords and
the test soundtracks played backwards. Writes docs/results/ood_video.json and docs/ood_video.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from polymodal import load
from polymodal.assets import ASSETS
from polymodal.data.audio import log_mel
from polymodal.data.clips import ClipBank, read_annotations
from polymodal.data.images import normalize
from polymodal.data.outside import make_item, render
from polymodal.data.speech import coloured_noise
from polymodal.eval.ood import auroc
from polymodal.train.video import VideoDataConfig, video_folder

ROOT = Path(__file__).resolve().parent.parent
RESULTS, PAGE = ROOT / "docs" / "results" / "ood_video.json", ROOT / "docs" / "ood_video.md"
RATE = 16000


def frame_sets(frames: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Outside frame stacks (N, T, 3, S, S) uint8, made from nothing or from the test clips' frames."""
    n, t, _, s, _ = frames.shape
    blur = torch.ones(3, 1, 5, 5) / 25
    solid = torch.tensor(rng.integers(0, 256, (n, 1, 3, 1, 1)), dtype=torch.uint8).expand(n, t, 3, s, s)
    stills = torch.stack([torch.from_numpy(np.asarray(render(make_item(7, i), s))).permute(2, 0, 1)
                          for i in range(n)])[:, None].expand(n, t, 3, s, s)
    blurred = F.conv2d(frames.flatten(0, 1).float(), blur, padding=2, groups=3).round().clamp(0, 255)
    return {"noise": torch.tensor(rng.integers(0, 256, frames.shape), dtype=torch.uint8),
            "solid colours": solid.contiguous(), "outside renderer, still": stills.contiguous(),
            "test clips, colours inverted": 255 - frames, "test clips, rotated 90 degrees": frames.rot90(1, (3, 4)),
            "test clips, blurred (5x5 box)": blurred.to(torch.uint8).reshape(frames.shape)}


def sound_sets(waves: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Outside waveforms (N, L) made from nothing or from the test soundtracks."""
    n, length = waves.shape
    t = np.arange(length) / RATE
    make = {
        "white noise": lambda: 0.1 * coloured_noise(length, "white", rng),
        "pink noise": lambda: 0.1 * coloured_noise(length, "pink", rng),
        "pure tones": lambda: 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t),
        "chords": lambda: 0.1 * sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 1000, 3)),
    }
    out = {name: torch.tensor(np.stack([f() for _ in range(n)]), dtype=torch.float32) for name, f in make.items()}
    out["test soundtracks played backwards"] = waves.flip(1)
    return out


def pooled(model, key: str, values: torch.Tensor, batch: int = 50) -> torch.Tensor:
    parts = []
    for i in range(0, len(values), batch):
        x = values[i:i + batch]
        inputs = {"frames": normalize(x.float() / 255.0)} if key == "frames" else {"mel": x}
        parts.append(model.media.pooled(inputs)["video" if key == "frames" else "audio"])
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ASSETS / "shapes_video_captioner"))
    args = parser.parse_args()
    model = load(args.model).eval()
    stats = model.ood_stats_by_input
    if not stats:
        raise SystemExit(f"{args.model}: no per-modality OOD statistics saved with it")
    data = VideoDataConfig()
    folder = video_folder(data, progress=False)
    clips = read_annotations(folder, data.test_split)
    media = model.cfg.media
    bank = ClipBank.build(clips, folder, media.frames, media.image_size, media.mel, encode=None, progress=False)
    rng = np.random.default_rng(0)
    rows: dict[str, dict] = {}
    if "video" in stats:
        frames = bank.tensors["frames"]
        inside = stats["video"].score(pooled(model, "frames", frames))
        rows["video"] = {"threshold": stats["video"].threshold, "test flagged": float((inside > stats["video"].threshold)
                                                                                       .float().mean()), "sets": {}}
        for name, x in frame_sets(frames, rng).items():
            out = stats["video"].score(pooled(model, "frames", x))
            rows["video"]["sets"][name] = {"auroc": auroc(inside, out),
                                           "flagged": float((out > stats["video"].threshold).float().mean())}
    if "audio" in stats:
        from polymodal.data.audio import fit_length, load_audio
        from polymodal.data.clips import clip_path

        samples = bank.tensors["mel"].shape[-1] * media.mel.hop_length
        waves = torch.stack([fit_length(load_audio(clip_path(folder, c), RATE), samples) for c in clips])
        mel = lambda w: torch.stack([log_mel(x, media.mel) for x in w])  # noqa: E731
        inside = stats["audio"].score(pooled(model, "mel", mel(waves)))
        rows["audio"] = {"threshold": stats["audio"].threshold, "test flagged": float((inside > stats["audio"].threshold)
                                                                                       .float().mean()), "sets": {}}
        for name, w in sound_sets(waves, rng).items():
            out = stats["audio"].score(pooled(model, "mel", mel(w)))
            rows["audio"]["sets"][name] = {"auroc": auroc(inside, out),
                                           "flagged": float((out > stats["audio"].threshold).float().mean())}
    command = "OMP_NUM_THREADS=1 python bench/ood_video.py" + ("" if args.model == parser.get_default("model")
                                                               else f" --model {args.model}")
    RESULTS.write_text(json.dumps({"command": command, "model": args.model, "clips": len(clips), "rows": rows},
                                  indent=1) + "\n")
    lines = ["# Clips unlike the training clips: video and sound checked apart", "",
             f"Written by `bench/ood_video.py` (do not edit by hand). Model `{args.model}`; in distribution: the "
             f"{len(clips)} held-out Shapes World test clips (n=1200, seed 0); every outside set has as many. A score "
             "above the modality's threshold (98th percentile of the validation clips) flags the input; "
             "`polymodal describe` and `polymodal videoqa` print a warning for it.", "", f"Reproduce: `{command}`", ""]
    for modality, row in rows.items():
        lines += [f"## {modality} (threshold {row['threshold']:.2f}; test clips flagged: {row['test flagged']:.1%})", "",
                  "| outside set | AUROC vs test clips | flagged |", "|---|---|---|"]
        lines += [f"| {name} | {s['auroc']:.3f} | {s['flagged']:.1%} |" for name, s in row["sets"].items()]
        lines.append("")
    PAGE.write_text("\n".join(lines))
    print(f"wrote {RESULTS} and {PAGE}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
