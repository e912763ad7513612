"""Replies that take a wrong point back (data/grounding.py, <retry>): the training data points at a look-alike
first, then <retry> and the right point, with no loss on the wrong point; the text and the points a user gets are
those after the last <retry>; a trained assistant grows the token without changing any other; the evaluation
says how often replies took a point back and whether that helped."""

from __future__ import annotations

import random

import torch

from polymodal.data.chat_template import render
from polymodal.data.dialogue import Turn
from polymodal.data.grounding import RETRY, location_ids, retry_id, split_locations
from polymodal.data.instructions import InstructionConfig, conversations_for_scene, with_retry
from polymodal.eval.assistant import Query, retry_report
from polymodal.models.assistant import InstructionAssistant
from polymodal.text.tokenizer import WordTokenizer
from tests.test_assistant_pointing import SCENE, _pointing_assistant

RED_CIRCLE, BLUE_SQUARE, GREEN_STAR = (o.centre for o in SCENE.objects)


def _retry_tokenizer() -> WordTokenizer:
    model = _pointing_assistant()
    model.add_words([RETRY])
    return model.tokenizer


def test_a_retracted_point_is_written_first_and_carries_no_loss():
    tok = _retry_tokenizer()
    turn = with_retry(Turn("where is the red circle?", "on the left", "position", (RED_CIRCLE,)), SCENE,
                      random.Random(0))
    assert turn.retracted and turn.retracted[0] in (BLUE_SQUARE, GREEN_STAR)
    ids, loss = render(tok, [turn])
    start = ids.index(tok.index["<assistant>"]) + 1
    wrong, right = location_ids(tok, turn.retracted), location_ids(tok, turn.points)
    assert ids[start:] == [*wrong, retry_id(tok), *right, *tok.encode("on the left"), tok.eos_id]
    assert loss[start:] == [False, False] + [True] * (len(ids) - start - 2)  # learnt: <retry> on, never the wrong point
    assert split_locations(tok, ids[start:])[1] == split_locations(tok, right)[1]  # the user gets the right point
    plain = render(tok, [Turn(turn.question, turn.answer, turn.kind, turn.points)])
    without = render(WordTokenizer([w for w in tok.words if w != RETRY]), [turn])  # no token: no retry written
    assert len(without[0]) == len(plain[0]) and RETRY not in [tok.words[i] for i in plain[0]]


def test_the_mixture_retries_only_when_asked_and_leaves_its_draws_alone():
    """retry_share=0 draws exactly the conversations it drew before; > 0 retracts a share of the pointing turns,
    at an object that is not one of the reply's."""
    plain = conversations_for_scene(SCENE, ["a red circle"], random.Random(1), InstructionConfig())
    again = conversations_for_scene(SCENE, ["a red circle"], random.Random(1), InstructionConfig(retry_share=0.0))
    assert plain == again and not any(t.retracted for c in plain for t in c)
    cfg = InstructionConfig(retry_share=1.0, conversations_per_image=40, weights={"position": 1.0, "count": 1.0})
    turns = [t for c in conversations_for_scene(SCENE, [], random.Random(2), cfg) for t in c]
    pointing = [t for t in turns if t.points]
    every = [t for t in pointing if len(t.points) == len(SCENE.objects)]  # "count the shapes": nothing else to miss
    assert every and not any(t.retracted for t in every) and not any(t.retracted for t in turns if not t.points)
    others = [t for t in pointing if t not in every]
    assert others and all(t.retracted and t.retracted[0] not in t.points for t in others)


def test_add_words_grows_the_vocabulary_and_keeps_every_other_embedding(tmp_path):
    model = _pointing_assistant()
    model.add_look_back()
    before, size = model.lm.wte.weight.detach().clone(), len(model.tokenizer)
    model.add_words([RETRY])
    model.add_words([RETRY])  # twice: nothing more
    assert len(model.tokenizer) == size + 1 and model.tokenizer.words[-1] == RETRY
    assert torch.equal(model.lm.wte.weight[:size], before) and model._location_of_token.shape[0] == size + 1
    images, tokens = torch.rand(1, 3, 32, 32), torch.tensor([[model.tokenizer.index["<user>"], size, 4]])
    assert model({"images": images, "tokens": tokens})[0].shape[-1] == size + 1  # tied output: one more logit
    again = InstructionAssistant.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.tokenizer.words == model.tokenizer.words and torch.equal(again.lm.wte.weight, model.lm.wte.weight)


def test_retry_report_says_how_often_a_point_was_taken_back_and_whether_it_helped():
    tok = _retry_tokenizer()
    retry, words = retry_id(tok), tok.encode("on the left")
    queries = [Query("a.png", [], "position", "on the left", points=(RED_CIRCLE,)) for _ in range(4)]
    queries.append(Query("a.png", [], "colour", "red"))  # not a pointing request: not counted
    ids = [location_ids(tok, [RED_CIRCLE]) + words,  # right at once
           location_ids(tok, [BLUE_SQUARE]) + [retry] + location_ids(tok, [RED_CIRCLE]) + words,  # fixed
           location_ids(tok, [BLUE_SQUARE]) + [retry] + location_ids(tok, [GREEN_STAR]) + words,  # still wrong
           location_ids(tok, [RED_CIRCLE]) + words,
           tok.encode("red")]
    assert retry_report(queries, ids, tok) == {"retry/share": 0.5, "retry/first_right": 0.0, "retry/final_right": 0.5}
    assert retry_report(queries, ids, WordTokenizer([w for w in tok.words if w != RETRY])) == {}


def test_retry_can_be_turned_off_and_then_is_never_written():
    model = _pointing_assistant()
    model.add_words([RETRY])
    retry = retry_id(model.tokenizer)
    with torch.no_grad():  # every final hidden state leans towards <retry>'s tied embedding: its logit is the top
        model.lm.ln_f.bias.fill_(3.0)
        model.lm.wte.weight[retry] = 3.0
    images, prompts = torch.rand(2, 3, 32, 32), [model.prompt_ids([{"role": "user", "content": "where is it?"}])] * 2
    assert retry not in model.never and all(ids[0] == retry for ids in model.reply_ids(images, prompts))
    model.assistant_cfg.retry = False
    assert retry in model.never and all(retry not in ids for ids in model.reply_ids(images, prompts))
