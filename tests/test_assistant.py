"""The instruction assistant (issue 25): its mixture, chat template, POPE sampling, training, reload and bad input."""

from __future__ import annotations

import logging

import pytest
import torch

import polymodal
from polymodal.data.chat_template import prompt, render
from polymodal.data.dialogue import USER, build_chat_tokenizer, read_scenes
from polymodal.data.instructions import (
    DECLINE_SCOPE,
    INSTRUCTION_KINDS,
    InstructionConfig,
    InstructionDataset,
    collate_instructions,
    conversations_from_scenes,
    is_decline,
)
from polymodal.data.records import SkipReport
from polymodal.data.shapes import HELDOUT_PAIRS, write_shapes_world
from polymodal.errors import InputError, PolymodalError
from polymodal.eval.assistant import Query, kind_report
from polymodal.eval.pope import ObjectStats, pope_metrics, pope_questions, similar
from polymodal.models.assistant import InstructionAssistant
from polymodal.train.assistant import conversations
from polymodal.train.tasks import load_task_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_shapes_world(tmp_path_factory.mktemp("shapes") / "w", n=60, image_size=32, progress=False)


@pytest.fixture(scope="module")
def mixture(world):
    return conversations_from_scenes(world, "train", {}, InstructionConfig(conversations_per_image=6))


def test_every_kind_is_in_the_mixture(mixture):
    kinds = {t.kind for c in mixture for t in c.turns}
    assert set(INSTRUCTION_KINDS) - {"describe"} <= kinds  # describe needs captions, given below
    assert any(k.startswith("follow/") for k in kinds) and any(k.startswith("open/") for k in kinds)
    assert any(len(c.turns) > 1 for c in mixture)


def test_describe_uses_the_captions(world):
    scenes = read_scenes(world, "train")
    captions = {image_id: [f"caption of {image_id}"] for image_id, _, _ in scenes}
    convs = conversations_from_scenes(world, "train", captions, InstructionConfig())
    described = [(c.id.split("-")[0], t.answer) for c in convs for t in c.turns if t.kind == "describe"]
    assert described and all(answer == f"caption of {image_id}" for image_id, answer in described)


def test_absent_objects_are_declined_and_really_absent(world, mixture):
    scenes = {str(image): scene for _, image, scene in read_scenes(world, "train")}
    absent = [(c, t) for c in mixture for t in c.turns if t.kind == "absent"]
    assert absent
    for conv, turn in absent:
        assert is_decline(turn.answer) and turn.answer.startswith("there is no ")
        thing = turn.answer.removeprefix("there is no ").removesuffix(" in the image").split()
        objs = scenes[conv.image].objects
        if thing[-1] == "object":  # "there is no purple object"
            assert all(o.colour != thing[0] for o in objs)
        elif len(thing) == 2:  # "there is no red star"
            assert all((o.colour, o.shape) != tuple(thing) for o in objs)
        else:
            assert all(o.shape != thing[0] for o in objs)
    scope = [t for c in mixture for t in c.turns if t.kind == "scope"]
    assert scope and all(t.answer == DECLINE_SCOPE for t in scope)
    negatives = [t.question for c in mixture for t in c.turns if t.kind == "exists" and t.answer == "no"]
    assert not any(f"{c} {s}" in q for q in negatives for c, s in HELDOUT_PAIRS)  # held-out pairs never "no"


def test_loss_covers_only_assistant_tokens(mixture):
    tok = build_chat_tokenizer(mixture)
    conv = next(c for c in mixture if len(c.turns) > 1)
    ids, loss = render(tok, conv.turns)
    expected = [i for t in conv.turns for i in (*tok.encode(t.answer), tok.eos_id)]
    assert [i for i, keep in zip(ids, loss, strict=True) if keep] == expected
    item = InstructionDataset([conv], [0], lambda row: torch.zeros(3, 8, 8, dtype=torch.uint8), tok, 200)[0]
    targets = [int(t) for t in item["targets"] if t != tok.pad_id]
    assert targets == expected
    batch = collate_instructions([item, item])
    assert batch["targets"].shape[1] == batch["tokens"].shape[1] - 1


def test_per_turn_items_ask_each_reply_after_the_turns_before_it(mixture):
    tok = build_chat_tokenizer(mixture)
    conv = next(c for c in mixture if len(c.turns) > 2)
    data = InstructionDataset([conv], [0], lambda row: torch.zeros(3, 8, 8, dtype=torch.uint8), tok, 200, per_turn=True)
    assert len(data) == len(conv.turns)
    for t, item in enumerate(data):
        start = int(item["prefix_len"])
        messages = [m for turn in conv.turns[:t] for m in ({"role": "user", "content": turn.question},
                                                           {"role": "assistant", "content": turn.answer})]
        asked = prompt(tok, [*messages, {"role": "user", "content": conv.turns[t].question}], budget=200)
        assert item["tokens"][:start].tolist() == asked.ids  # the prompt it is asked with at inference
        targets = [int(i) for i in item["targets"] if i != tok.pad_id]
        assert targets == [*tok.encode(conv.turns[t].answer), tok.eos_id]  # loss on this reply alone
    short = InstructionDataset([conv], [0], lambda row: torch.zeros(3, 8, 8, dtype=torch.uint8), tok,
                               len(render(tok, conv.turns[-1:])[0]), per_turn=True)[len(conv.turns) - 1]
    assert tok.decode(short["tokens"][: int(short["prefix_len"])]) == "<user> " + tok.decode(
        tok.encode(conv.turns[-1].question))  # too long: the oldest turns went
    assert collate_instructions([data[0], data[1]])["prefix_len"].tolist() == [int(data[0]["prefix_len"]),
                                                                              int(data[1]["prefix_len"])]


def test_prompt_trims_oldest_turns_and_long_questions(mixture):
    tok = build_chat_tokenizer(mixture)
    turns = [{"role": "user", "content": "what colour is the star?"}, {"role": "assistant", "content": "red"}] * 50
    p = prompt(tok, [*turns, {"role": "user", "content": "what size is it?"}], budget=30)
    assert len(p.ids) <= 30 and p.dropped > 0
    assert tok.decode(p.ids[-5:]) == "<user> what size is it" and tok.decode(p.ids[:1]) == "<user>"
    few = prompt(tok, [*turns[:10], {"role": "user", "content": "what size is it?"}], budget=90, max_earlier_turns=2)
    assert few.ids.count(tok.index[USER]) == 3 and tok.decode(few.ids[-5:]) == "<user> what size is it"
    assert few.dropped == 6 and prompt(tok, turns[:1], budget=90, max_earlier_turns=2).dropped == 0
    long = prompt(tok, [{"role": "user", "content": "red " * 2500}], budget=20)
    assert len(long.ids) == 20 and long.cut
    with pytest.raises(InputError):
        prompt(tok, [{"role": "user", "content": "   "}], budget=20)


def test_pope_negatives_are_absent_and_adversarial_ones_similar(world):
    scenes = read_scenes(world, "test")
    stats = ObjectStats.from_scenes([s for _, _, s in read_scenes(world, "train")])
    by_image = {image: scene for _, image, scene in scenes}
    for sampling in ("random", "popular", "adversarial"):
        questions = pope_questions(scenes, sampling, stats)
        assert sum(q.truth for q in questions) == sum(not q.truth for q in questions)  # balanced
        for q in questions:
            present = {(o.colour, o.shape) for o in by_image[q.image].objects}
            assert (q.object in present) == q.truth
            if sampling == "adversarial" and not q.truth:
                assert similar(q.object, present)
    m = pope_metrics([True, True, False, False], ["yes", "no", "yes", "no"])
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_rate"]) == (0.5, 0.5, 0.5, 0.5)


def test_kind_report_counts_declines():
    q = [Query("a", [], "absent", "there is no star in the image"), Query("a", [], "colour", "red"),
         Query("a", [], "follow/size", "small")]
    report = kind_report(q, ["there is no star in the image", "there is no circle in the image", "small"])
    assert report["decline/absent"] == 1.0 and report["accuracy/colour"] == 0.0
    assert report["false_decline"] == 0.5 and report["accuracy/follow-up"] == 1.0


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    task, cfg = load_task_config("configs/assistant.yaml", [
        f"data.path={world}", "data.n=60", "data.render_size=32", "data.eval_images=4", "pretrain.steps=0", f"train.out_dir={out}",
        "train.steps=4", "train.batch_size=8", "train.eval_every=2", "model.image_size=32",
        "model.encoder.width=8", "model.decoder.hidden_dim=32", "model.decoder.num_layers=1", "model.decoder.num_heads=4",
        "model.decoder.max_positions=48", "assistant.max_reply_len=12"])
    summary = task(cfg, progress=False)
    return out, summary


def test_tiny_assistant_trains_saves_and_reloads(trained, world):
    out, summary = trained
    assert summary["step"] == 4 and "accuracy/count" in summary["test"] and "heldout" in summary
    model = polymodal.load(out / "model")
    assert isinstance(model, InstructionAssistant) and model.ood_stats is not None  # its replies can say "unlike"
    assert summary["ood_threshold"] == pytest.approx(model.ood_stats.threshold)
    image = next(iter(read_scenes(world, "test")))[1]
    first = InstructionAssistant.from_pretrained(out / "model")
    question = [{"role": "user", "content": "how many shapes are there?"}]
    assert model.chat(image, question) == first.chat(image, question)  # the same weights came back
    replies = model.answer(image, ["how many shapes are there?", "is there a red circle?"])
    assert replies == [model.chat_reply(image, [{"role": "user", "content": q}]).guess  # the VQA API: a one-turn chat
                       for q in ("how many shapes are there?", "is there a red circle?")]  # (without "not sure")
    assert model.calibration is not None and summary["calibration"]["temperature"] == model.calibration.temperature


def test_bad_input_gives_a_reply_or_one_error(trained, world, caplog):
    model = polymodal.load(trained[0] / "model")
    image = next(iter(read_scenes(world, "test")))[1]
    with pytest.raises(PolymodalError):
        model.chat(image, [{"role": "user", "content": ""}])
    with pytest.raises(PolymodalError):
        model.answer(image, "  ")
    assert isinstance(model.chat(image, [{"role": "user", "content": "what colour is the star? " * 200}]), str)
    assert isinstance(model.chat(image, [{"role": "user", "content": "¿De qué color es el círculo? 圆是什么颜色"}]), str)
    turns = [m for k in range(100) for m in ({"role": "user", "content": f"what size is it {k}?"},
                                             {"role": "assistant", "content": "small"})]
    with caplog.at_level(logging.WARNING, logger="polymodal.models.assistant"):
        assert isinstance(model.chat(image, [*turns, {"role": "user", "content": "and where is it?"}]), str)
        assert isinstance(model.chat(image, [*turns, {"role": "user", "content": "what colour is it?"}]), str)
    assert sum("oldest" in r.message for r in caplog.records) == 1  # trimmed, said once
    asked = model.prompt_ids([*turns, {"role": "user", "content": "what colour is it?"}])
    assert asked.count(model.tokenizer.index[USER]) == 3  # the 2 earlier turns it was trained with, then the question
    other = next(iter(read_scenes(world, "heldout")))[1]  # a new image mid-conversation is just the one looked at
    assert isinstance(model.chat(other, [*turns[:4], {"role": "user", "content": "what size is it?"}]), str)


def test_unknown_kind_weights_are_ignored_not_crashing(world):
    cfg = InstructionConfig(weights={"count": 1.0, "nonsense": 3.0}, dialogue_share=0.0)
    convs = conversations_from_scenes(world, "val", {}, cfg)
    assert convs and {t.kind for c in convs for t in c.turns} == {"count"}
    again = conversations_from_scenes(world, "val", {}, cfg)
    assert [t.question for c in again for t in c.turns] == [t.question for c in convs for t in c.turns]  # seeded


def test_training_goes_on_from_a_trained_assistant(trained, world, tmp_path):
    out, _ = trained
    start = InstructionAssistant.from_pretrained(out / "model")
    task, cfg = load_task_config("configs/assistant.yaml", [
        f"data.path={world}", "data.n=60", "data.render_size=32", "data.eval_images=4", "pretrain.steps=0",
        f"train.out_dir={tmp_path / 'more'}", "train.steps=2", "train.batch_size=8", "train.eval_every=2",
        "model.image_size=32", f"init_from={out / 'model'}"])  # the model's own config wins over the file's
    summary = task(cfg, progress=False)
    more = InstructionAssistant.from_pretrained(tmp_path / "more" / "model")
    assert summary["step"] == 2 and more.cfg == start.cfg and more.tokenizer.to_dict() == start.tokenizer.to_dict()
    before, after = start.state_dict(), more.state_dict()
    moved = sum(float((after[n].float() - p.float()).abs().sum()) for n, p in before.items())
    torch.manual_seed(1)
    fresh = type(start)(start.cfg, start.tokenizer, start.prefix_cfg, start.assistant_cfg).state_dict()
    assert 0 < moved < sum(float((fresh[n].float() - p.float()).abs().sum()) for n, p in before.items())


def test_the_look_back_grows_onto_a_trained_assistant_and_trains(trained, world, tmp_path):
    out, _ = trained
    task, cfg = load_task_config("configs/assistant_look_back.yaml", [
        f"data.path={world}", "data.n=60", "data.render_size=32", "data.eval_images=4", f"init_from={out / 'model'}",
        f"train.out_dir={tmp_path}", "train.steps=2", "train.batch_size=8", "train.eval_every=2", "train.lr=0.01"])
    task(cfg, progress=False)
    model = polymodal.load(tmp_path / "model")
    assert model.prefix_cfg.look_back and float(model.look_gate.abs().sum()) > 0  # it learnt from zero


def test_a_bidirectional_prefix_trains_on_each_reply_and_reloads(world, tmp_path):
    task, cfg = load_task_config("configs/assistant.yaml", [
        f"data.path={world}", "data.n=60", "data.render_size=32", "data.eval_images=2", "pretrain.steps=0",
        f"train.out_dir={tmp_path}", "train.steps=2", "train.batch_size=8", "train.eval_every=2", "model.image_size=32",
        "model.encoder.width=8", "model.decoder.hidden_dim=32", "model.decoder.num_layers=1", "model.decoder.num_heads=4",
        "model.decoder.max_positions=48", "assistant.max_reply_len=12", "prefix.bidirectional_prefix=true",
        "data.instructions.max_turns=4"])
    summary = task(cfg, progress=False)
    turns = sum(len(c.turns) for c in conversations(cfg.data, "train", SkipReport(source="test")))
    assert summary["train_conversations"] == turns  # one item per reply
    model = polymodal.load(tmp_path / "model")
    assert model.prefix_cfg.bidirectional_prefix
    assert model.assistant_cfg.max_earlier_turns == 3  # its prompts keep what its longest conversations had
    assert isinstance(model.chat(next(iter(read_scenes(world, "test")))[1],
                                 [{"role": "user", "content": "how many shapes are there?"}]), str)


def _tune(config: str, trained, world, tmp_path, *overrides: str) -> tuple[dict, InstructionAssistant]:
    """Two steps of a fine-tuning task (SCST, assistant_rl) on the tiny trained assistant; its summary and result."""
    task, cfg = load_task_config(config, [
        f"init_from={trained[0] / 'model'}", f"train.out_dir={tmp_path}", f"data.path={world}", "data.n=60",
        "data.render_size=32", "train.steps=2", "train.batch_size=4", "train.eval_every=2", "scst.num_samples=2",
        *overrides])
    return task(cfg, progress=False), polymodal.load(tmp_path / "model")


def test_scst_fine_tunes_an_assistant_s_captions_and_keeps_it_an_assistant(trained, world, tmp_path):
    """configs/scst.yaml on an assistant: its captions (replies to "describe the image") are what SCST samples and
    scores; the result still chats, with its calibration and out-of-distribution statistics."""
    summary, tuned = _tune("configs/scst.yaml", trained, world, tmp_path, "scst.eval_images=4")
    assert summary["step"] == 2 and summary["architecture"] == "assistant"
    assert isinstance(tuned, InstructionAssistant) and tuned.calibration is not None and tuned.ood_stats is not None
    image = next(iter(read_scenes(world, "test")))[1]
    assert isinstance(tuned.chat(image, [{"role": "user", "content": "how many shapes are there?"}]), str)
    # a caption is the reply to "describe the image", said in words only (a chat reply may point first)
    said = tuned.generate(tuned.preprocess([image]))[0][0].tokens
    assert tuned.caption([image], strategy="greedy") == [tuned.tokenizer.decode(said)]
    assert not set(said) & set(tuned.unsaid_ids) and tuned.caption_context()[:-1] == tuned.describe_prompt()


def test_scst_with_the_instruction_loss_beside_it_adds_the_weighed_teacher_forced_loss(trained, world, tmp_path):
    """scst.instruction_weight: each step's loss is the SCST loss plus that much of the assistant's teacher-forced
    loss on a batch of its instruction mixture (train/instruction_anchor.py)."""
    summary, tuned = _tune("configs/scst.yaml", trained, world, tmp_path, "scst.eval_images=4",
                           "scst.instruction_weight=0.5", "scst.instruction_batch=4")
    assert summary["final_instruction_loss"] > 0
    assert summary["final_loss"] == pytest.approx(summary["final_scst_loss"] + 0.5 * summary["final_instruction_loss"],
                                                  rel=1e-4, abs=1e-5)
    assert isinstance(tuned, InstructionAssistant)


def test_the_instruction_loss_beside_scst_needs_an_assistant():
    from polymodal.assets import bundled_model_dir
    from polymodal.errors import ConfigError
    from polymodal.train.instruction_anchor import instruction_anchor
    from polymodal.train.scst import ScstConfig, ScstExperimentConfig

    cfg = ScstExperimentConfig(init_from=str(bundled_model_dir()), scst=ScstConfig(instruction_weight=1.0))
    with pytest.raises(ConfigError, match="needs an assistant"):
        instruction_anchor(polymodal.load(bundled_model_dir()), cfg, SkipReport(source="test"))


def test_self_critical_replies_learn_what_the_reward_asks_after_prompts_of_any_length(trained):
    """The policy gradient of train/reply_rl.py: samples follow each row's own prompt (padded batches), only the
    reply's tokens (and its <eos>) are scored, and a reward for saying "red" is learnt."""
    from polymodal.train.reply_rl import SelfCriticalReplies
    from polymodal.train.scst import ScstConfig

    out, _ = trained
    torch.manual_seed(0)
    model = polymodal.load(out / "model")
    questions = ["what colour is the circle?", "is there a red square in the image?", "how many shapes are there?"]
    prompts = [model.prompt_ids([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) > 1
    tokens = torch.nn.utils.rnn.pad_sequence([torch.tensor(p) for p in prompts], batch_first=True,
                                             padding_value=model.tokenizer.pad_id)
    batch = {"images": torch.randn(3, 3, 32, 32), "tokens": tokens, "record": torch.arange(3)}

    def says_red(replies: list[tuple[str, list]], indices: list[int]) -> torch.Tensor:
        return torch.tensor([words.split().count("red") / max(len(words.split()), 1) for words, _ in replies])

    objective = SelfCriticalReplies(model, says_red, ScstConfig(baseline="mean", num_samples=6))
    contexts = objective.contexts(batch)
    logp, mask = objective.sequence_logprobs(batch["images"], [[5, 6], [7], []], contexts, max_len=4)
    assert mask.sum(1).tolist() == [3, 2, 1] and (logp[~mask] == 0).all() and (logp[mask] < 0).all()

    def mean_reward() -> float:
        torch.manual_seed(123)
        return float(torch.stack([objective(batch)[1]["reward"] for _ in range(3)]).mean())

    before = mean_reward()
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.03)
    for _ in range(12):
        objective.train()
        loss = objective(batch)[1]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mean_reward() > before + 0.2


def test_assistant_rl_task_tunes_a_saved_assistant_and_refits_its_calibration(trained, world, tmp_path):
    summary, tuned = _tune("configs/assistant_rl.yaml", trained, world, tmp_path, "rl.eval_images=4")
    assert summary["step"] == 2 and summary["train_requests"] > 0 and "temperature" in summary["calibration"]
    assert 0.0 <= summary["best"] <= 1.0  # the validation replies' accuracy it was kept for
    assert isinstance(tuned, InstructionAssistant) and tuned.calibration is not None and tuned.ood_stats is not None
    image = next(iter(read_scenes(world, "test")))[1]
    assert isinstance(tuned.chat(image, [{"role": "user", "content": "where is the red circle?"}]), str)


def test_the_retry_stage_grows_retry_onto_a_trained_assistant_and_learns_it(trained, world, tmp_path):
    """configs/assistant_retry.yaml: the look-back and <retry> grown onto a trained assistant; after two steps
    <retry> has its own learnt embedding and the saved model keeps it."""
    from polymodal.data.grounding import RETRY

    out, _ = trained
    task, cfg = load_task_config("configs/assistant_retry.yaml", [
        f"data.path={world}", "data.n=60", "data.render_size=32", "data.eval_images=4", f"init_from={out / 'model'}",
        "data.instructions.retry_share=1.0", f"train.out_dir={tmp_path}", "train.steps=2", "train.batch_size=8",
        "train.eval_every=2", "train.lr=0.01"])
    task(cfg, progress=False)
    model, before = polymodal.load(tmp_path / "model"), polymodal.load(out / "model")
    assert model.tokenizer.words == [*before.tokenizer.words, RETRY] and model.prefix_cfg.look_back
    assert not torch.equal(model.lm.wte.weight[:-1], before.lm.wte.weight)  # it trained
