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
    train, val, held_out = make_tasks(60, split="train"), make_tasks(60, split="val"), make_tasks(60)
    assert {t.user_id for t in train + val} <= {u["user_id"] for u in train_users}
    assert {t.user_id for t in held_out} <= {u["user_id"] for u in test_users}
    ids = [{t.task_id for t in tasks} for tasks in (train, val, held_out)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 180   # distinct ids: distinct user seeds
    assert [t.requests for t in val] != [t.requests for t in train]   # drawn apart from the training tasks


def test_episode_reward_by_hand():
    # success, 2 violations at 0.5 each, half the turns well formed at weight 0.2: 1 - 1 + 0.1
    assert grpo.episode_reward(True, 2, 0.5, 0.5, 0.2) == pytest.approx(0.1)
    assert grpo.episode_reward(False, 0, 1.0, 0.5, 0.0) == 0.0
    assert grpo.episode_reward(False, 1, 0.0, 0.25, 1.0) == -0.25


def episode_args(*extra: str):
    return grpo.parse_args(["--model", "tiny", "--episodes", "8", "--prompts-per-step", "2", "--group-size", "3",
                            "--max-new-tokens", "24", "--turn-limit", "4", "--temperature", "0.8", *extra])


def roll(model, tok, args) -> tuple:
    """rollout_episodes on two training tasks, and the episodes themselves."""
    caught = {}
    real = grpo.run_episodes

    def run_and_keep(*a, **kw):
        caught["episodes"] = real(*a, **kw)
        return caught["episodes"]
    grpo.run_episodes = run_and_keep
    try:
        tasks = [t for t in make_tasks(8, split="train") if t.greeting][:2]   # openings that vary with the seed
        groups = grpo.rollout_episodes(model, tok, tasks, 0, torch.Generator().manual_seed(1), args, True)
    finally:
        grpo.run_episodes = real
    return groups, caught["episodes"]


@pytest.fixture(scope="module")
def rollout():
    """Two training tasks x G = 3 episodes of the pretrained tiny model (it calls tools, often wrongly: the
    conversations hold tool outputs and user replies), and the episodes themselves."""
    args = episode_args()
    model, tok = load("tiny")
    groups, episodes = roll(model, tok, args)
    return model, tok, args, groups, episodes


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
    batch = grpo.training_batch(groups, grpo.row_advantages(groups, advantages, args), args, tok.pad_token_id, "cpu")
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
    assert seen == len(length)
    assert batch.n_sequences == len(groups.scores)   # --episode-weight episode: an episode is one sequence
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
              "--log-rollouts", "1", "--step-credit", "1"]
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


# ----------------------------------------------------------------------------------------------
# How much an episode weighs in the loss (--episode-weight; grpo.aggregate_loss, grpo.loss_sequences)
# ----------------------------------------------------------------------------------------------
def episode_rows(split: bool) -> list[tuple[int, list[int], list[int]]]:
    """Two tasks x G = 2 episodes, a row per agent turn: (episode, prompt, completion). Episode 0 writes the tokens
    21..26 in one turn, or (split) in three turns of two, each turn's prompt the one before it and its completion, so
    each token is predicted from the same context either way. Episodes 1-3 are the same in both: 3, 1 + 4 and
    2 + 1 + 5 tokens (90-92 are tool outputs, prompt tokens). Episode 0 has 6 tokens, the step 22."""
    o, p = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]
    first = [(0, o, [21, 22]), (0, o + [21, 22], [23, 24]), (0, o + [21, 22, 23, 24], [25, 26])] if split \
        else [(0, o, [21, 22, 23, 24, 25, 26])]
    return first + [(1, o, [31, 32, 33]),
                    (2, p, [41]), (2, p + [41, 90], [42, 43, 44, 45]),
                    (3, p, [51, 52]), (3, p + [51, 52, 91], [53]), (3, p + [51, 52, 91, 53, 92], [54, 55, 56, 57, 58])]


ADVANTAGES = torch.tensor([1.0, -0.5, 0.25, 1.5])   # of episodes 0-3


def episode_groups(split: bool, pad_id: int) -> grpo.Groups:
    from sampling import Generation, left_pad
    rows = episode_rows(split)
    prompt_ids, prompt_mask = left_pad([p for _, p, _ in rows], pad_id)
    width = max(len(c) for _, _, c in rows)
    completion_ids = torch.tensor([c + [pad_id] * (width - len(c)) for _, _, c in rows])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for _, _, c in rows])
    gen = Generation(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(len(rows), dtype=torch.bool))
    return grpo.Groups(["task 0", "task 1"], gen, [], torch.ones(2, dtype=torch.bool), 2,
                       torch.tensor([e for e, _, _ in rows]), "episode")


class RecordingSGD(torch.optim.SGD):
    """Keeps the gradient of its step (policy_update clears it after the step)."""
    def step(self, closure=None):
        self.gradient = torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]])


def loss_and_gradient(split: bool, mode: str, weight: str, micro_batch: int) -> tuple[float, torch.Tensor]:
    """One update (policy_update) on episode_groups: beta = 0, one iteration (ratio 1), so each token's loss is -A of
    its episode, and the loss -sum_e A_e W_e, W_e the episode's weight. The gradient is before clipping."""
    args = grpo.parse_args(["--model", "tiny-random", "--episodes", "8", "--prompts-per-step", "2", "--group-size",
                            "2", "--max-new-tokens", "6", "--turn-limit", "3", "--beta", "0", "--loss-agg", mode,
                            "--micro-batch", str(micro_batch), "--max-grad-norm", "1e9"])
    args.episode_weight = weight
    model, tok = load("tiny-random")
    params = list(model.parameters())
    optimizer = RecordingSGD(params, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    groups = episode_groups(split, tok.pad_token_id)
    batch = grpo.training_batch(groups, grpo.row_advantages(groups, ADVANTAGES, args), args, tok.pad_token_id, "cpu")
    update = grpo.policy_update(model, optimizer, scheduler, params, batch, [None] * len(batch.micro),
                                [None] * len(batch.micro), args)
    return update.loss, optimizer.gradient


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_an_episode_weighs_the_same_whether_its_tokens_took_one_turn_or_three(mode):
    """--episode-weight episode: episode 0's six tokens in one turn, or in three turns that land in three
    micro-batches, give the same loss and the same gradient, up to the float rounding of other packed rows (the
    largest difference is 1.5e-6 of the largest entry; under `turn`, 0.2-0.3 for grpo and dr_grpo)."""
    one, one_grad = loss_and_gradient(False, mode, "episode", 32)
    three, three_grad = loss_and_gradient(True, mode, "episode", 1)
    assert one_grad.abs().max() > 0
    assert three == pytest.approx(one, rel=1e-6)
    assert (three_grad - one_grad).abs().max() < 1e-5 * one_grad.abs().max()


# Derived by hand. Tokens per episode T = (6, 3, 5, 8), 22 in all; N = 4 episodes, rows 9 (split) or 7; L = 6 new
# tokens a turn, 3 turns an episode. Each token's loss is -A_e (ratio 1, no KL), so sum_tokens l = -sum_e T_e A_e
# = -(6 - 1.5 + 1.25 + 12) = -17.75, and per row -n_r A_e.
#   episode  grpo     -(1/N) sum_e A_e                    = -(1 - 0.5 + 0.25 + 1.5) / 4       = -0.5625
#            dapo     -sum_e T_e A_e / sum_e T_e          = -17.75 / 22
#            dr_grpo  -sum_e T_e A_e / (N x 3 x 6)        = -17.75 / 72
#   turn     grpo     -(1/rows) sum_r A_e(r)              = -(3 - 0.5 + 2 x 0.25 + 3 x 1.5) / 9 = -7.5 / 9
#            dapo     as episode                          = -17.75 / 22
#            dr_grpo  -sum_e T_e A_e / (rows x 6)         = -17.75 / 54
BY_HAND = {("episode", "grpo"): -0.5625, ("episode", "dapo"): -17.75 / 22, ("episode", "dr_grpo"): -17.75 / 72,
           ("turn", "grpo"): -7.5 / 9, ("turn", "dapo"): -17.75 / 22, ("turn", "dr_grpo"): -17.75 / 54}


@pytest.mark.parametrize("weight, mode", list(BY_HAND))
def test_the_loss_of_episode_rows_by_hand(weight, mode):
    """Each aggregation's loss on episode_groups (split), as derived above; `turn` is the weighting before
    --episode-weight (a row per turn, N = rows), kept for comparison."""
    loss, _ = loss_and_gradient(True, mode, weight, 32)
    assert loss == pytest.approx(BY_HAND[weight, mode], rel=1e-6)


def test_aggregate_loss_of_episode_rows_by_hand():
    """Per-token losses that differ within an episode: rows 0 and 1 are the turns of episode a (|o_a| = 3 + 1
    tokens, their losses sum to 10), row 2 episode b (|o_b| = 2, sum 14); N = 2, 6 tokens, L = 2 turns x 3 = 6.
        grpo     (10/4 + 14/2) / 2 = 4.75      (episode a's token mean 10/4, not the mean 3 of its turns' 2 and 4)
        dapo     24 / 6 = 4
        dr_grpo  24 / (2 x 6) = 2
    and the rows' parts in separate micro-batches sum to the whole."""
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [6.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    lengths = torch.tensor([4.0, 4.0, 2.0])
    for mode, want in (("grpo", 4.75), ("dapo", 4.0), ("dr_grpo", 2.0)):
        assert grpo.aggregate_loss(per_token, mask, mode, 2, 6, 6, lengths).item() == pytest.approx(want)
        parts = sum(grpo.aggregate_loss(per_token[i:i + 1], mask[i:i + 1], mode, 2, 6, 6, lengths[i:i + 1])
                    for i in range(3))
        assert parts.item() == pytest.approx(want)


def test_two_ranks_weigh_episodes_as_one_process(tmp_path):
    """--loss-agg grpo, where a row's weight is its episode's length: computed from the whole step's episodes before
    the rows are split over two gloo ranks and over micro-batches of one turn, the step is one process's
    (tests/test_parallel.py's tolerances)."""
    from test_parallel import check, run
    lr = 1e-4
    common = ["grpo.py", "--model", "tiny", "--episodes", "8", "--steps", "1", "--group-size", "2",
              "--max-new-tokens", "12", "--turn-limit", "3", "--lr", str(lr), "--warmup", "1", "--keep-zero-variance",
              "--w-episode-format", "1", "--seed", "3", "--loss-agg", "grpo", "--micro-batch", "1"]
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "one")], 1, 0)
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "two")], 2, 29641)
    run(common + ["--prompts-per-step", "2", "--out", str(tmp_path / "half")], 1, 0)
    check(tmp_path / "one", tmp_path / "two", tmp_path / "half", lr)


# ----------------------------------------------------------------------------------------------
# --max-prompt-len bounds an episode's contexts
# ----------------------------------------------------------------------------------------------
def test_an_episode_ends_before_a_turn_whose_prompt_would_pass_max_prompt_len():
    """The openings are ~60 tiny tokens and a turn adds ~40: under a bound of 120 every row's prompt fits, and an
    episode whose next prompt would not fit ended there, as at the turn limit."""
    args = episode_args("--max-prompt-len", "120")
    model, tok = load("tiny")
    groups, episodes = roll(model, tok, args)
    assert int(groups.gen.prompt_mask.sum(1).max()) <= 120
    cut = [e for e in episodes if e.agent_turns < args.turn_limit and e.ended_by == "turn limit"]
    assert cut   # not vacuous
    assert all(len(prompt_ids(tok, e.context(), True)) > 120 for e in cut)
    assert [s.ended_by for s in groups.scores] == [e.ended_by for e in episodes]


def test_an_opening_longer_than_max_prompt_len_is_refused():
    from data import DataError
    with pytest.raises(DataError, match="--max-prompt-len"):
        roll(*load("tiny"), episode_args("--max-prompt-len", "20"))


# ----------------------------------------------------------------------------------------------
# Credit per turn (--step-credit): GiGPO's step-level advantage, by hand
# ----------------------------------------------------------------------------------------------
def test_discounted_returns_pay_the_outcome_back_to_earlier_turns():
    # R_j = gamma^(T - 1 - j) R: gamma 0.5, two turns left -> 0.25 R; the last turn -> R; a failure stays 0
    got = grpo.discounted_returns(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([2, 0, 1]), 0.5)
    assert got.tolist() == [0.25, 1.0, 0.0]


def test_turns_left_counts_each_episodes_rows_in_order():
    # episode 0 is rows 0, 2, 3 (turns 0, 1, 2 of 3), episode 1 rows 1, 4 (turns 0, 1 of 2)
    assert grpo.turns_left(torch.tensor([0, 1, 0, 0, 1])).tolist() == [2, 1, 1, 0, 0]


def test_step_advantages_compare_turns_within_their_step_group_only():
    # step group 0: returns 1 and 0 -> mean 0.5, population std 0.5 -> +-0.5 / 0.5001; group 1 equal -> 0;
    # group 2 a single turn -> 0
    got = grpo.step_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 3.0]), torch.tensor([0, 0, 1, 1, 2]))
    assert got.tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0.0, 0.0, 0.0], rel=1e-6)


def three_turn_groups(prompts: list[list[int]], owners: list[int], totals: list[float], G: int) -> grpo.Groups:
    from types import SimpleNamespace

    from sampling import Generation, left_pad
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    n = len(prompts)
    gen = Generation(prompt_ids, prompt_mask, torch.ones(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long),
                     torch.zeros(n, dtype=torch.bool))
    return grpo.Groups([f"task {k}" for k in range(len(totals) // G)], gen, [SimpleNamespace(total=t) for t in totals],
                       torch.ones(len(totals) // G, dtype=torch.bool), G, torch.tensor(owners), "episode")


def test_step_groups_are_the_same_conversation_so_far_within_one_task():
    # tasks 0 (episodes 0, 1) and 1 (episodes 2, 3): rows 0 and 1 share a prompt within task 0; row 2 has the same
    # tokens in task 1 (another task: another group); row 3 another prompt
    groups = three_turn_groups([[5, 6], [5, 6], [5, 6], [5, 7]], [0, 1, 2, 3], [1.0, 0.0, 1.0, 0.0], G=2)
    labels = grpo.step_groups(groups).tolist()
    assert labels[0] == labels[1] and len({labels[0], labels[2], labels[3]}) == 3


def test_each_turn_trains_with_its_episodes_advantage_plus_w_times_its_step_advantage():
    """One task, G = 2: episode 0 took two turns and succeeded (R = 1), episode 1 failed in one (R = 0); both first
    turns were taken from the opening (prompt X), episode 0's second from Y. By hand, gamma 0.95, w 1:
      A^E = (R - 0.5) / (0.5 + 1e-4) = +-0.5 / 0.5001 for the episodes;
      returns: episode 0 turn 0: 0.95 x 1, episode 1 turn 0: 0, episode 0 turn 1: 1;
      A^S: the opening's step group {0.95, 0} -> +-0.475 / 0.4751; Y alone -> 0."""
    args = grpo.parse_args(["--model", "tiny-random", "--episodes", "8", "--prompts-per-step", "1", "--group-size",
                            "2", "--step-credit", "1", "--step-gamma", "0.95"])
    groups = three_turn_groups([[5, 6], [5, 6], [5, 6, 9, 9]], [0, 1, 0], [1.0, 0.0], G=2)
    episode = grpo.group_advantages(groups.totals()).view(-1)
    got = grpo.row_advantages(groups, episode, args)
    a_e, a_s = 0.5 / 0.5001, 0.475 / 0.4751
    assert got.tolist() == pytest.approx([a_e + a_s, -a_e - a_s, a_e], rel=1e-5)
    args.step_credit = 0.0   # off: every turn carries its episode's advantage
    assert grpo.row_advantages(groups, episode, args).tolist() == pytest.approx([a_e, -a_e, a_e], rel=1e-5)


def test_step_credit_without_episodes_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        grpo.parse_args(["--model", "tiny-random", "--step-credit", "1"])
    assert stop.value.code == 2 and "--episodes" in capsys.readouterr().err
