"""Run under torchrun by tests/test_ddp.py: train straight, then stop-and-resume, saving each rank's weights.

    torchrun --nproc_per_node=2 tests/ddp_worker.py OUT_DIR OVERRIDE...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from polymodal.config import load_config
from polymodal.data.datasets import load_split
from polymodal.data.records import SkipReport
from polymodal.models.captioner import Captioner
from polymodal.text.tokenizer import WordTokenizer
from polymodal.train import distributed
from polymodal.train.captioning import fit_captioner


def run(out: Path, overrides: list[str], stop_at: int | None = None) -> Captioner:
    cfg = load_config(None, [*overrides, f"train.out_dir={out}"])
    report = SkipReport()
    with distributed.main_process_first():
        records = load_split(cfg.data, cfg.data.train_split, report)
    tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
    torch.manual_seed(cfg.seed)
    model = Captioner(cfg.model, tokenizer)
    fit_captioner(model, cfg, records, report, progress=False, stop_at=stop_at)
    return model


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    with distributed.session() as env:
        for name, stops in (("straight", [None]), ("resumed", [3, None])):
            for stop_at in stops:
                model = run(out / name, overrides, stop_at)
            weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            save_file(weights, str(out / f"{name}-rank{env.rank}.safetensors"))


if __name__ == "__main__":
    main()
