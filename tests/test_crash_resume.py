"""Crash-safe training: kill -9 a real `polymodal train` process at 5 moments, resume, same weights.

One training run (tiny captioner, Shapes World, CPU, 16 steps, a checkpoint every 4) is killed
five times in a row, each resume picking up what the last kill left:

1. mid-training, between two checkpoints (killed from outside once log.jsonl reaches step 5);
2. inside the checkpoint writer, after the weights but before the tokenizer and trainer state;
3. inside the writer, after every file is written but before fsync and rename;
4. between the writer's two renames (the previous checkpoint moved aside, the new one not in yet);
5. after the new checkpoint is in place, before the moved-aside copy is deleted.

Moments 2-5 use the writer's crash points (`checkpoint.crash_point`): the process pauses there and
the test sends SIGKILL. After every kill the checkpoint folder must be absent or complete (never
corrupt); the sixth process finishes, and its final weights must equal, bit for bit, those of a
run that was never interrupted. A resume with another learning rate must be refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polymodal.checkpoint import PAUSE_AT, PAUSE_FILE, recover_directory
from polymodal.config import load_config
from polymodal.data.datasets import shapes_folder
from polymodal.eval.viz import read_log_series
from polymodal.train.state import drop_partial_line

STEPS = 16
OVERRIDES = [f"train.steps={STEPS}", "train.batch_size=8", "train.warmup_steps=3", "train.eval_every=0",
             "train.checkpoint_every=4", "train.log_every=1", "data.n=60", "data.render_size=32",
             "model.image_size=32", "model.encoder.width=8", "model.decoder.embed_dim=16",
             "model.decoder.hidden_dim=32", "model.decoder.attention_dim=16", "model.decoder.dropout=0.1"]
# (moment, pause point "name:n" or None for an outside kill once log.jsonl shows step 5)
# The n counts passes within one process, chosen so that every resume starts from a real checkpoint:
# expected resume steps 4, 4, 8, 8, 12 (the first kill may land a little later than step 5).
KILLS = [("mid-training", None), ("weights written, rest not", "weights_written:1"),
         ("files written, before rename", "files_written:2"), ("between the two renames", "between_renames:1"),
         ("committed, old copy not yet deleted", "committed:1")]


def _env(tmp_path: Path, pause: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env[PAUSE_FILE] = str(tmp_path / "paused")
    env.pop(PAUSE_AT, None)
    if pause:
        env[PAUSE_AT] = pause
    return env


def _train(tmp_path: Path, out: Path, pause: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    (tmp_path / "paused").unlink(missing_ok=True)
    cmd = [sys.executable, "-c", "import torch, sys; torch.set_num_threads(1); from polymodal.cli import main; "
           "sys.argv[0] = 'polymodal'; main()", "train", str(tmp_path / "exp.yaml"), f"train.out_dir={out}",
           *OVERRIDES, *extra, "--quiet"]
    return subprocess.Popen(cmd, env=_env(tmp_path, pause), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_step(out: Path) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill: {proc.stderr.read()[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the kill moment never came")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup handlers, no finally blocks
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _assert_not_corrupt(out: Path) -> int:
    """The checkpoint after a kill: absent, or complete and loadable. Returns its step (0 if none)."""
    import polymodal

    folder = recover_directory(out / "checkpoint")  # what the next resume does first
    if not folder.exists():
        return 0
    state = json.loads((folder / "trainer_state.json").read_text())
    load_file(str(folder / "optimizer.safetensors"))
    polymodal.load(folder)
    return state["step"]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    (tmp_path / "exp.yaml").write_text("task: captioning\nseed: 3\n")
    shapes_folder(load_config(None, OVERRIDES).data)  # write the data once, before any process races for it
    return tmp_path


def test_kill_9_at_five_moments_then_resume_gives_identical_weights(experiment: Path):
    tmp = experiment
    straight = _train(tmp, tmp / "straight")
    interrupted = tmp / "interrupted"
    resumed_from = []
    for moment, pause in KILLS:
        proc = _train(tmp, interrupted, pause)
        if pause is None:
            _kill_when(proc, lambda: _logged_step(interrupted) >= 5)
        else:
            _kill_when(proc, lambda: (tmp / "paused").exists())
        resumed_from.append((moment, _assert_not_corrupt(interrupted)))
    final = _train(tmp, interrupted)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-800:]
    _, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err[-800:]
    # Every kill left a real checkpoint behind (never a corrupt one), so every resume really resumed.
    steps = [step for _, step in resumed_from]
    assert all(s > 0 for s in steps) and steps == sorted(steps), resumed_from
    print(f"kill -9 moments survived: {resumed_from}")
    for name in ("checkpoint", "model"):
        a = load_file(str(tmp / "straight" / name / "model.safetensors"))
        b = load_file(str(interrupted / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}/{key} differs after {resumed_from}"
    assert not list(interrupted.glob(".checkpoint.tmp-*")) and not (interrupted / "checkpoint.old").exists()
    # The log of the five-times-killed run is whole: every line a record, the curves readable.
    lines = (interrupted / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert read_log_series(interrupted / "log.jsonl")["loss"][0][-1] == STEPS

    refused = _train(tmp, interrupted, extra=("train.lr=0.0007", f"train.steps={STEPS + 4}"))
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, err[-800:]
    assert "different config" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_kill_9_at_random_moments_until_done(experiment: Path):
    """The long version: kill at random times (seeded) until a run gets through; same weights."""
    import random

    tmp, rng, kills = experiment, random.Random(11), 0
    straight = _train(tmp, tmp / "straight", extra=(f"train.steps={STEPS * 2}",))
    out = tmp / "random"
    while True:
        proc = _train(tmp, out, extra=(f"train.steps={STEPS * 2}",))
        try:
            proc.wait(timeout=rng.uniform(2.0, 6.0))  # startup takes ~2 s, so most kills land in training
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            _assert_not_corrupt(out)
            continue
        assert proc.returncode == 0, proc.stderr.read()[-800:]
        break
    assert straight.wait(timeout=300) == 0
    assert kills >= 3, f"only {kills} kills landed; the run was too quick for this test"
    print(f"random kill -9s survived: {kills}")
    a = load_file(str(tmp / "straight" / "checkpoint" / "model.safetensors"))
    b = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), f"differs after {kills} random kills"


def test_a_log_line_cut_by_a_kill_is_dropped_before_the_run_goes_on(tmp_path: Path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # killed in the middle of a write
    drop_partial_line(log)
    assert log.read_bytes() == b'{"step": 1, "loss": 2.0}\n'
    log.write_bytes(b"x" * 70_000)  # one huge partial line, longer than a read block
    drop_partial_line(log)
    assert log.read_bytes() == b""
