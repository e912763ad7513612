"""The assistant's training step on a CPU: attention dropout (the weights dropped) vs none (PyTorch's fused attention
kernel), and bf16 autocast on top (`train.amp`), on the same batches of its instruction mixture.

    OMP_NUM_THREADS=2 python bench/assistant_step.py [--steps 12] [--batch 32]

The model is configs/assistant.yaml's (frozen small CNN, 192-wide 4-layer prefix LM) before training, so the
step costs what a training step costs. Dropout on the attention weights makes `scaled_dot_product_attention` run its
unfused path (the weights materialised, a Bernoulli mask drawn for each); without it the CPU kernel is fused.
Records section "assistant_step" (docs/results/bench_assistant_step.json, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import load_average, machine, today, write_section  # noqa: E402

from polymodal.data.instructions import collate_instructions  # noqa: E402
from polymodal.data.records import SkipReport  # noqa: E402
from polymodal.models.assistant import InstructionAssistant  # noqa: E402
from polymodal.nn.transformer import Attention  # noqa: E402
from polymodal.train.assistant import conversations, instruction_sets, mixture_tokenizer  # noqa: E402
from polymodal.train.tasks import load_task_config  # noqa: E402

SPEED_UP = {"format": ".2f", "unit": "x"}
VARIANTS = {"attention dropout 0.1 (unfused)": (0.1, False), "attention dropout 0 (fused)": (0.0, False),
            "attention dropout 0 + bf16 autocast": (0.0, True)}


def batches(n: int, batch: int) -> tuple[list[dict[str, torch.Tensor]], InstructionAssistant]:
    """`n` training batches of the Shapes World mixture and an untrained assistant of configs/assistant.yaml."""
    _, cfg = load_task_config("configs/assistant.yaml", ["pretrain.steps=0"])
    report = SkipReport(source="bench")
    convs = conversations(cfg.data, "train", report)[: 40 * batch]
    model = InstructionAssistant(copy.deepcopy(cfg.model), mixture_tokenizer(convs, cfg.data.instructions.location_grid),
                                 cfg.prefix, cfg.assistant)
    data = instruction_sets(model, {"train": convs}, report, progress=False)["train"]
    loader = DataLoader(data, batch_size=batch, shuffle=True, collate_fn=collate_instructions,
                        generator=torch.Generator().manual_seed(0))
    return list(itertools.islice(loader, n)), model


def step_rate(model: InstructionAssistant, data: list[dict[str, torch.Tensor]], attention: float, amp: bool) -> float:
    """Training steps per second (forward, backward, AdamW) with this attention dropout, after two warm-up steps."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.dropout = attention
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict[str, torch.Tensor]) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(batch)[1]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for batch in data[:2]:
        step(batch)
    start = time.perf_counter()
    for batch in data[2:]:
        step(batch)
    return (len(data) - 2) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, variants interleaved; the best rate is kept")
    args = parser.parse_args()
    data, model = batches(args.steps + 2, args.batch)
    best = dict.fromkeys(VARIANTS, 0.0)
    for _ in range(args.rounds):  # interleaved, so a load spike hits every variant alike
        for name, (attention, amp) in VARIANTS.items():
            best[name] = max(best[name], step_rate(model, data, attention, amp))
            print(f"{name}: {best[name]:.2f} steps/s")
    base = best["attention dropout 0.1 (unfused)"]
    rows = "\n".join(f"| {name} | {rate:.2f} | {1 / rate:.3f} s | {rate / base:.2f}x |" for name, rate in best.items())
    fused, amp = (best[k] / base for k in list(VARIANTS)[1:])
    write_section("assistant_step", f"""
## The assistant's training step: fused attention and bf16 on a CPU

`python bench/assistant_step.py` ({today()}) — forward, backward and AdamW of configs/assistant.yaml's model
(frozen small CNN, 192-wide 4-layer prefix LM) on {args.steps} batches of {args.batch} instruction conversations,
best of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads, {machine()}, {load_average()}.
configs/assistant.yaml sets `model.decoder.attention_dropout: 0` for the fused kernel and leaves `train.amp` off.

| step | steps/s | per step | speed-up |
|---|---|---|---|
{rows}
""", figures={"fused attention speed-up": fused, "fused + bf16 speed-up": amp},
        described={"fused attention speed-up": {"what": "assistant training steps/s, attention dropout 0 vs 0.1",
                                                **SPEED_UP},
                   "fused + bf16 speed-up": {"what": "the same with bf16 autocast, vs attention dropout 0.1",
                                             **SPEED_UP}})


if __name__ == "__main__":
    main()
