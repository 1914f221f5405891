"""GRPO on whole conversations (grpo.py --episodes): the tasks, the outcome reward, and that every agent turn is
trained on the ids it sampled, in the context it sampled them in."""

import json

import pytest
import torch

import grpo
from data import Action, TurnSample, prompt_ids
from episodes import make_tasks
from model import load, special_tokens
from toolcalls import parse_completion
from worlds import RETAIL, retail_world


def test_training_tasks_are_of_training_users_and_never_of_an_evaluation_user():
    import random
    _, train_users, test_users = retail_world(random.Random(0))
    train, held_out = make_tasks(60, split="train"), make_tasks(60)
    assert {t.user_id for t in train} <= {u["user_id"] for u in train_users}
    assert {t.user_id for t in held_out} <= {u["user_id"] for u in test_users}
    assert not {t.task_id for t in train} & {t.task_id for t in held_out}   # distinct ids: distinct user seeds


def test_episode_reward_by_hand():
    # success, 2 violations at 0.5 each, half the turns well formed at weight 0.2: 1 - 1 + 0.1
    assert grpo.episode_reward(True, 2, 0.5, 0.5, 0.2) == pytest.approx(0.1)
    assert grpo.episode_reward(False, 0, 1.0, 0.5, 0.0) == 0.0
    assert grpo.episode_reward(False, 1, 0.0, 0.25, 1.0) == -0.25


def episode_args(*extra: str):
    return grpo.parse_args(["--model", "tiny", "--episodes", "8", "--prompts-per-step", "2", "--group-size", "3",
                            "--max-new-tokens", "24", "--turn-limit", "4", "--temperature", "0.8", *extra])


@pytest.fixture(scope="module")
def rollout():
    """Two training tasks x G = 3 episodes of the pretrained tiny model (it calls tools, often wrongly: the
    conversations hold tool outputs and user replies), and the episodes themselves."""
    args = episode_args()
    model, tok = load("tiny")
    caught = {}
    real = grpo.run_episodes

    def run_and_keep(*a, **kw):
        caught["episodes"] = real(*a, **kw)
        return caught["episodes"]
    grpo.run_episodes = run_and_keep
    try:
        tasks = [t for t in make_tasks(8, split="train") if t.greeting][:2]   # openings that vary with the seed
        groups = grpo.rollout_episodes(model, tok, tasks, 0,
                                       torch.Generator().manual_seed(1), args, True)
    finally:
        grpo.run_episodes = real
    return model, tok, args, groups, caught["episodes"]


def test_each_turn_row_is_the_prompt_the_template_renders_at_that_turn_and_the_text_the_agent_said(rollout):
    """Rebuilt from the finished conversations alone: agent turn t of an episode saw the chat template's rendering
    of its messages before its t-th assistant message (earlier reasoning is never kept in the history), and wrote
    what the conversation records; a tool output or a user reply is never part of a completion."""
    _, tok, _, groups, episodes = rollout
    gen, owner = groups.gen, groups.row_owner.tolist()
    prompt_len = gen.prompt_mask.sum(1).tolist()
    texts = gen.completion_texts(tok)
    tool_outputs = 0
    for k, e in enumerate(episodes):
        rows = [r for r in range(len(owner)) if owner[r] == k]   # in round order: the episode's turns in order
        assistant = [i for i, m in enumerate(e.messages) if m["role"] == "assistant"]
        assert len(rows) == len(assistant) == e.agent_turns
        for t, (r, at) in enumerate(zip(rows, assistant)):
            history = e.messages[:at]
            want = prompt_ids(tok, TurnSample("x", RETAIL.system, [s.schema() for s in RETAIL.tools.values()],
                                              history, Action()), True)
            assert gen.prompt_ids[r, gen.prompt_ids.shape[1] - prompt_len[r]:].tolist() == want
            tool_outputs += sum(m["role"] == "tool" for m in history)
            said = e.messages[at]   # what the conversation records of the turn is the parse of the text sampled
            parsed = parse_completion(texts[r], special_tokens(tok))
            assert said["content"] == parsed.answer
            assert [c["function"] for c in said.get("tool_calls") or []] == parsed.tool_calls
    assert tool_outputs > 0   # not vacuous: some turns were sampled after tool outputs
    assert int(gen.completion_mask.sum()) == sum(len(ids) for ids in gen.completion_lists())


@pytest.mark.parametrize("share", [True, False])
def test_the_update_scores_every_episode_turn_as_the_sampler_did(rollout, share):
    """The log-probs the loss recomputes (training_batch's packed rows: a group's episodes in one prefix tree, or a
    row per turn) equal those at sampling time, turn by turn, and each row carries its episode's advantage."""
    from dataclasses import replace
    model, tok, args, groups, _ = rollout
    # the rows in reverse order (as a --refill join or another draw could hold them): no row's position tells its
    # episode, only row_owner does
    back = torch.arange(len(groups.row_owner) - 1, -1, -1)
    gen = groups.gen
    groups = replace(groups, gen=replace(gen, prompt_ids=gen.prompt_ids[back], prompt_mask=gen.prompt_mask[back],
                                         completion_ids=gen.completion_ids[back],
                                         completion_mask=gen.completion_mask[back], truncated=gen.truncated[back],
                                         logprobs=gen.logprobs[back]),
                     row_owner=groups.row_owner[back], trained=torch.ones(len(groups.samples), dtype=torch.bool))
    args.no_shared_prefix = not share
    advantages = torch.arange(len(groups.scores), dtype=torch.float32) + 1.0   # episode k: advantage k + 1
    batch = grpo.training_batch(groups, advantages, args, tok.pad_token_id, "cpu")
    sampled = groups.gen.logprobs
    length = groups.gen.completion_mask.sum(1).tolist()
    by_row = [(groups.gen.completion_ids[r, :length[r]].tolist(), sampled[r, :length[r]], int(groups.row_owner[r]))
              for r in range(len(length))]   # each turn's sampled ids, their log-probs then, its episode
    seen = 0
    for b in batch.micro:
        with torch.no_grad():
            scored = grpo.token_logprobs(model.eval(), b, args.temperature)
        starts = [0] + b.mask.sum(1).long().cumsum(0).tolist()
        for i in range(len(b.advantages)):
            n = int(b.mask[i].sum())
            completion = b.targets[starts[i]:starts[i] + n].tolist()
            match = [(lp, k) for c, lp, k in by_row if c == completion]
            assert match
            assert any(torch.allclose(scored[i, :n], lp, atol=1e-4) and float(b.advantages[i]) == k + 1
                       for lp, k in match)
            seen += 1
    assert seen == len(length) == batch.n_sequences
    assert batch.n_tokens == int(groups.gen.completion_mask.sum())


def test_the_episodes_of_a_group_share_their_user_and_the_outcome_is_the_reward(rollout):
    _, _, args, groups, episodes = rollout
    for k, e in enumerate(episodes):
        assert e.trial == k % args.group_size
        s = groups.scores[k]
        assert s.total == grpo.episode_reward(s.success, s.violations, 1 - s.format_errors / s.turns,
                                              args.w_violation, args.w_episode_format)
    # the G episodes of a task open alike: one user seed for the group (trial k's own seed k would greet
    # differently: 'Hi there!', 'Hello, I need some help.', 'Hey.' for the first of these tasks)
    for i in range(0, len(episodes), args.group_size):
        assert len({episodes[i + j].messages[0]["content"] for j in range(args.group_size)}) == 1


def test_episode_training_resumes_exactly_and_logs_whole_episodes(tmp_path):
    common = ["--model", "tiny", "--episodes", "8", "--steps", "3", "--group-size", "2", "--prompts-per-step", "2",
              "--max-new-tokens", "16", "--turn-limit", "3", "--save-every", "1", "--keep-zero-variance",
              "--w-episode-format", "1",   # the tiny base rarely succeeds: the shaping term tells episodes apart
              "--log-rollouts", "1"]
    assert grpo.main(common + ["--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    grpo.train(grpo.parse_args(common + ["--out", str(cut)]), stop_after=2)
    assert grpo.main(["--resume", str(cut)]) == 0
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = load("tiny")[0].state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)   # the run did train
    records = [json.loads(line) for line in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all("task_success" in r for r in records)
    logged = [json.loads(line) for line in (cut / "rollouts.jsonl").read_text().splitlines()]
    assert (cut / "rollouts.jsonl").read_text() == (tmp_path / "full" / "rollouts.jsonl").read_text()
    assert len(logged) == 3 * 2 and all(len(g["episodes"]) == 2 and g["task_id"].startswith("train") for g in logged)
    assert all("user:" in e["transcript"] for g in logged for e in g["episodes"])
    import rollouts   # and `python rollouts.py RUN` shows them: outcome rows and transcripts
    shown = rollouts.render(rollouts.select(rollouts.read_groups(cut), None, False, False, None))
    assert shown.count("ended by") == 2 and shown.count("user: ") >= 4


def test_episode_step_on_the_real_model_path_under_lora(tmp_path, qwen_random_dir):
    """The real-model path (a random Qwen3 with the real Qwen3 tokenizer and template, LoRA, the real-model
    defaults): an episode step trains the adapters and saves a model that loads."""
    out = tmp_path / "ep"
    assert grpo.main(["--model", str(qwen_random_dir), "--episodes", "4", "--steps", "1", "--group-size", "2",
                      "--prompts-per-step", "2", "--max-new-tokens", "8", "--turn-limit", "2", "--lora-rank", "4",
                      "--w-episode-format", "1", "--keep-zero-variance", "--lr", "1e-2", "--out", str(out)]) == 0
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["agent_turns"] <= 2 and record["new_tokens"] > 0 and record["grad_norm"] > 0
    load(str(out))
