"""DDP: two CPU processes (gloo on 127.0.0.1) train to identical weights, equal to one process with the
same global batch; a stopped DDP run resumes exactly; `torchrun -m polymodal train` logs from rank 0 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from polymodal.config import load_config
from polymodal.train.captioning import train_captioner
from polymodal.train.distributed import DistEnv, DistributedBatchSampler
from polymodal.train.similar_batches import SimilarCaptionOrder
from polymodal.train.trainer import EpochBatchSampler

ROOT = Path(__file__).resolve().parent.parent

# Captions cut to 3 words (every Shapes World caption has at least 3) give every row the same number of
# tokens, so the mean of the two ranks' mean losses is exactly the global batch's mean loss. Dropout is
# off (each rank would draw its own masks) and the encoder is frozen (BatchNorm would use per-rank
# batch statistics): what is left must agree up to float summation order.
OVERRIDES = ["train.steps=6", "train.warmup_steps=2", "train.eval_every=0", "train.checkpoint_every=0",
             "train.log_every=2", "train.lr=0.005", "data.n=120", "data.render_size=32", "data.max_len=3",
             "model.image_size=32", "model.encoder.width=8", "model.encoder.freeze=true",
             "model.decoder.embed_dim=32", "model.decoder.hidden_dim=64", "model.decoder.attention_dim=32",
             "model.decoder.dropout=0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_distributed_batches_are_the_single_process_global_batches():
    single = list(EpochBatchSampler(50, 8, seed=3, epoch=1))
    ranks = [list(DistributedBatchSampler(50, 4, seed=3, env=DistEnv(r, 2), epoch=1)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7  # 25 samples per rank (drop_last), batches of 4
    for k in range(6):  # the last single-process batch (2 items) is where drop_last differs
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(single[k])
    resumed = DistributedBatchSampler(50, 4, seed=3, env=DistEnv(1, 2), epoch=1, start=2)
    assert list(resumed) == ranks[1][2:]



def test_distributed_batches_follow_an_epoch_order_in_contiguous_shares():
    order = SimilarCaptionOrder(["a red circle", "a blue circle", "two stars", "three stars", "a red square"] * 10,
                                owners=range(50), group=2)
    single = EpochBatchSampler(50, 8, seed=3, epoch=1, order=order).batches()
    ranks = [list(DistributedBatchSampler(50, 4, seed=3, env=DistEnv(r, 2), epoch=1, order=order)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    for k in range(6):  # each global batch split in two halves, in the order's sequence (groups stay whole)
        assert ranks[0][k] + ranks[1][k] == single[k]
    assert ranks[0][6] + ranks[1][6] == single[6]  # the last global batch (2 items): one each
    resumed = DistributedBatchSampler(50, 4, seed=3, env=DistEnv(1, 2), epoch=1, start=2, order=order)
    assert list(resumed) == ranks[1][2:]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    train_captioner(load_config(None, [*OVERRIDES, "train.batch_size=16", f"train.out_dir={tmp_path / 'one'}"]),
                    progress=False)
    _torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "ddp"), *OVERRIDES, "train.batch_size=8")
    one = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    rank0, rank1 = (load_file(str(tmp_path / "ddp" / f"straight-rank{r}.safetensors")) for r in (0, 1))
    resumed = load_file(str(tmp_path / "ddp" / "resumed-rank1.safetensors"))
    assert rank0.keys() == rank1.keys() == one.keys()
    worst = max(float((one[k] - rank0[k]).abs().max()) for k in one)
    for key in one:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the ranks bit-identical
        assert torch.equal(rank1[key], resumed[key]), key  # stop at step 3 + resume = straight run
        # Summation order differs (two partial gradients vs one), and AdamW's normalized steps magnify
        # that where the true gradient is ~0 (a bias before the attention softmax, which is shift
        # invariant): a few 1e-4 there, ~1e-6 in the output layer.
        assert torch.allclose(rank0[key], one[key], atol=1e-3, rtol=0), (key, worst)
    saved = load_file(str(tmp_path / "ddp" / "straight" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)  # rank 0 wrote the checkpoint


def test_torchrun_cli_logs_from_rank_zero_only(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("task: captioning\n")
    out = tmp_path / "run"
    result = _torchrun("-m", "polymodal", "train", str(config), *OVERRIDES, "train.steps=4", "train.batch_size=8",
                       f"train.out_dir={out}", "--quiet")
    assert result.stdout.count('"world_size": 2') == 1  # one summary, printed by rank 0
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]  # not written twice
    assert lines[-1]["summary"]["world_size"] == 2
    assert (out / "model" / "model.safetensors").exists() and (out / "checkpoint" / "trainer_state.json").exists()
