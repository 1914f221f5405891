"""Episodes: the scripted user, the episode loop on the agent's own actions, and tau-bench's metrics."""

import dataclasses
import json
import random

import pytest

import episodes
import eval as evaluation
from episodes import ScriptedUser, gold_agent, make_tasks, pass_hat_k, run_episodes, score, transcript
from worlds import RETAIL_TRAIN_USERS, USER_SAYS, retail_world

WRITES = {"cancel_pending_order", "return_delivered_order_items", "modify_user_address"}


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(40, seed=0)


def changes_db(task) -> bool:
    return any(c["name"] in WRITES for r in task.requests for action in r.gold for c in action)


def test_tasks_are_held_out_users_and_cover_every_flow(tasks):
    _, train_users, test_users = retail_world(random.Random(0))
    assert {t.user_id for t in tasks} <= {u["user_id"] for u in test_users}
    assert not {t.user_id for t in tasks} & {u["user_id"] for u in train_users}
    assert {f for t in tasks for f in t.flows} == set(episodes.FLOWS)
    assert any(changes_db(t) for t in tasks) and any(not changes_db(t) for t in tasks)
    assert any(r.withheld for t in tasks for r in t.requests) and len(train_users) == RETAIL_TRAIN_USERS


def test_the_gold_agent_succeeds_on_every_task(tasks):
    eps = run_episodes(gold_agent, tasks, trials=2, turn_limit=12)
    row = score(eps, trials=2)
    assert row["task_success"] == 1.0 and row["pass^1"] == 1.0 and row["pass^2"] == 1.0
    assert row["tool_errors"] == 0 and row["violations"] == 0 and all(e.ended_by == "user" for e in eps)


def test_an_agent_that_never_calls_a_tool_fails_every_task_that_changes_the_database(tasks):
    eps = run_episodes(lambda active: ["Hello! How can I help you today?"] * len(active), tasks, 1, turn_limit=6)
    writing = [e for e in eps if changes_db(e.task)]
    assert writing and not any(episodes.end_state_ok(e, episodes.goal_state(e.task, retail_world_db()))
                               for e in writing)
    assert score(eps, 1)["task_success"] == 0.0 and all(e.ended_by == "turn limit" for e in eps)


def retail_world_db():
    return retail_world(random.Random(0))[0]


def test_cancelling_a_delivered_order_is_a_policy_violation_and_fails(tasks):
    task = next(t for t in make_tasks(200) if t.requests[0].flow == "cancel" and len(t.requests) == 1
                and t.requests[0].report == ["delivered"])       # the order is delivered: the gold is a refusal
    order_id = task.requests[0].details["order_id"]
    cancel = {"name": "cancel_pending_order", "arguments": {"order_id": order_id, "reason": "no longer needed"}}
    moves = ["Hello!"] * task.greeting + [f"<tool_call>\n{json.dumps(cancel)}\n</tool_call>", task.requests[0].answer]
    [e] = run_episodes(lambda active: [moves[a.agent_turns] for a in active], [task], 1, turn_limit=5)
    assert e.violations == 1 and e.db["orders"][order_id]["status"] == "cancelled"
    assert score([e], 1)["task_success"] == 0.0


def test_the_user_answers_with_exactly_the_detail_asked_for_and_is_deterministic(tasks):
    task = next(t for t in tasks if t.requests[0].flow == "status" and t.requests[0].withheld)
    order_id = task.requests[0].details["order_id"]
    user = ScriptedUser(task, 0)
    user.opening()
    if task.greeting:
        assert user.reply("Hello! How can I help you today?") == task.requests[0].text
    reply = user.reply("Sure, I can help with that. Could you please give me the order id?")
    assert reply in [s.format(order_id=order_id) for s in USER_SAYS["order id"]]
    assert ScriptedUser(task, 0).reply("What is your favourite colour?") != reply
    assert user.reply("Could you tell me your phone number, please?") == episodes.NUDGE   # not a detail it knows

    def play():
        return [transcript(e) for e in run_episodes(gold_agent, tasks[:10], trials=2, turn_limit=12)]
    assert play() == play()


def test_pass_hat_k_by_hand():
    # three tasks with 4, 2 and 0 successes of n = 4 trials
    assert pass_hat_k([4, 2, 0], 4, 1) == pytest.approx((1 + 2 / 4 + 0) / 3)
    assert pass_hat_k([4, 2, 0], 4, 2) == pytest.approx((6 / 6 + 1 / 6 + 0) / 3)    # C(4,2) = 6, C(2,2) = 1
    assert pass_hat_k([4, 2, 0], 4, 4) == pytest.approx(1 / 3)


def test_tasks_file_round_trips_and_eval_runs_episodes(tmp_path, capsys):
    assert episodes.main(["tasks", "--n", "3", "--out", str(tmp_path / "tasks.json")]) == 0
    assert episodes.load_tasks(str(tmp_path / "tasks.json")) == make_tasks(3)
    assert evaluation.main(["--model", "tiny-random", "--episodes", str(tmp_path / "tasks.json"), "--trials", "2",
                            "--turn-limit", "2", "--max-new-tokens", "8", "--show", "1",
                            "--out", str(tmp_path / "e.json")]) == 0
    row = json.loads((tmp_path / "e.json").read_text())["tiny-random"]
    assert row["tasks"] == 3 and row["trials"] == 2 and 0 <= row["task_success"] <= 1 and row["turns"] == 2
    assert "=== task0 trial 0" in capsys.readouterr().out


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


FUZZ_VALUES = {"list": ["W1"], "object": {"order_id": "W1"}, "null": None, "int": 7, "float": 1e308, "bool": True,
               "1 MB string": "W" * 1_000_000, "nested 1000 deep": nested(1000), "empty string": ""}


def as_json(kind: str, value) -> str:
    """The value as the model would write it (1,000 levels written out: json.dumps itself stops short of them)."""
    return "[" * 1000 + "]" * 1000 if kind == "nested 1000 deep" else json.dumps(value)


@pytest.mark.parametrize("kind", list(FUZZ_VALUES))
def test_no_argument_value_of_any_json_type_stops_an_episode(tasks, kind):
    """Model output is untrusted: every retail tool, every parameter, a value of each JSON type -> an observation
    (the tool's output or an error), whether the call reaches the tool directly or through the model's text."""
    task = tasks[0]
    good = {"user_id": task.user_id, "email": "x@example.com", "order_id": "W0000001", "reason": "no longer needed",
            "item_ids": ["P001"], "product_id": "P001", "address1": "1 Main St", "city": "Springfield",
            "zip": "12345", "name": "Ann Lee"}
    for tool in episodes.RETAIL.tools.values():
        for name in tool.params:
            args = {p: good.get(p, "x") for p in tool.params} | {name: FUZZ_VALUES[kind]}
            e = episodes.Episode(task, 0, episodes.overlay(retail_world_db()), ScriptedUser(task, 0))
            observation = e.execute({"name": tool.name, "arguments": args})   # straight to the tool
            assert isinstance(observation, dict)
            json.dumps(observation)                            # what the episode appends to the conversation
            fields = ", ".join(f"{json.dumps(k)}: {as_json(kind if k == name else '', v)}" for k, v in args.items())
            e.step(f'<tool_call>\n{{"name": "{tool.name}", "arguments": {{{fields}}}}}\n</tool_call>', turn_limit=5)
            assert e.messages[-1]["role"] == "tool" or e.format_errors == 1   # ran, or refused by the parser


def test_a_value_of_the_wrong_type_is_an_error_observation_not_a_write(tasks):
    task = next(t for t in make_tasks(200) if t.requests[0].flow == "cancel")
    order_id = task.requests[0].details["order_id"]
    e = episodes.Episode(task, 0, episodes.overlay(retail_world_db()), ScriptedUser(task, 0))
    before = dict(e.db["orders"][order_id])
    observation = e.execute({"name": "cancel_pending_order", "arguments": {"order_id": [order_id], "reason": "x"}})
    assert observation == {"error": "invalid arguments: order_id must be a string"}
    assert e.db["orders"][order_id] == before and e.tool_errors == 1 and e.violations == 0


def test_keeping_each_episodes_cache_between_turns_changes_no_completion(tmp_path, capsys, monkeypatch):
    import sampling
    reused = []
    real = sampling.reusable
    monkeypatch.setattr(sampling, "reusable", lambda p, q: reused.append(real(p, q)) or reused[-1])
    common = ["--model", "tiny", "--episodes", "3", "--trials", "2", "--turn-limit", "3", "--max-new-tokens", "24",
              "--show", "3"]
    transcripts = {}
    for cache in ("on", "off"):
        assert evaluation.main(common + ["--episode-cache", cache, "--out", str(tmp_path / f"{cache}.json")]) == 0
        transcripts[cache] = capsys.readouterr().out
        row = json.loads((tmp_path / f"{cache}.json").read_text())["tiny"]
        row.pop("seconds")
        transcripts[cache + " row"] = row
    assert transcripts["on"] == transcripts["off"] and transcripts["on row"] == transcripts["off row"]
    assert transcripts["on"].count("=== task") == 3
    assert sum(n > 50 for n in reused) >= 6   # turns 2 and 3 of the 6 episodes reused their conversation so far


CANNED = "Your order is pending, processed, delivered, cancelled or return requested."


def trivial_agents() -> dict:
    """Agents that do nothing useful: each must fail (nearly) every held-out task."""
    def every_turn(text):
        return lambda active: [text] * len(active)
    return {"canned statuses": every_turn(CANNED), "refusal": every_turn("I'm sorry, I can't help with that."),
            "done": every_turn("Done."), "echo": lambda active: [a.messages[-1]["content"] for a in active]}


@pytest.mark.parametrize("name", list(trivial_agents()))
def test_an_agent_that_does_nothing_useful_passes_at_most_2_percent_of_held_out_tasks(name):
    tasks = make_tasks(200)
    row = score(run_episodes(trivial_agents()[name], tasks, 1, turn_limit=12), trials=1)
    assert row["task_success"] <= 0.02, (name, row["task_success"])


def test_naming_every_status_after_the_right_tool_calls_tells_the_user_nothing():
    """The gold agent's tool calls, then one sentence naming all five statuses in place of each answer: the status it
    should report is in the sentence, and so are four that contradict it."""
    tasks = [t for t in make_tasks(200) if {r.flow for r in t.requests} <= {"status", "two orders"}]
    def calls_then_canned(active):
        moves = [episodes.gold_moves(e.task) for e in active]
        moves = [m[min(e.agent_turns, len(m) - 1)] for e, m in zip(active, moves)]   # the user waits for the values
        return [m if m.startswith("<tool_call>") else CANNED for m in moves]
    eps = run_episodes(calls_then_canned, tasks, 1, turn_limit=12)
    assert len(tasks) >= 20 and all(e.tool_errors == 0 for e in eps)
    assert score(eps, 1)["task_success"] == 0.0


def test_values_the_agent_never_read_from_a_tool_do_not_count():
    """An agent that says the gold answers without making any tool call: on read-only tasks the end state is right
    and the user hears the right values, but the agent never obtained them -- as if it had guessed."""
    tasks = [t for t in make_tasks(200) if not changes_db(t)]
    def says_without_reading(active):
        moves = [[m for m in episodes.gold_moves(e.task) if not m.startswith("<tool_call>")] for e in active]
        return [m[min(e.agent_turns, len(m) - 1)] for e, m in zip(active, moves)]
    eps = run_episodes(says_without_reading, tasks, 1, turn_limit=12)
    assert all(e.ended_by == "user" for e in eps)          # the user heard every value it asked for
    assert score(eps, 1)["task_success"] == 0.0


def test_a_tasks_file_plays_on_its_own_database_whatever_the_runs_seed(tmp_path):
    """Tasks written with --seed 1 and run as eval.py runs them (its --seed 0): the world is the file's, so the
    gold agent's calls find their orders and users (0 tool errors) and every task succeeds."""
    path = str(tmp_path / "tasks.json")
    assert episodes.main(["tasks", "--n", "30", "--seed", "1", "--out", path]) == 0
    tasks = episodes.load_tasks(path, 0)
    assert tasks == make_tasks(30, seed=1) and tasks != make_tasks(30, seed=0)
    row = score(run_episodes(gold_agent, tasks, 1, turn_limit=12), 1)
    assert row["tool_errors"] == 0 and row["task_success"] == 1.0


def test_a_tasks_file_without_its_world_seed_is_refused_naming_the_record_and_field(tmp_path):
    records = [dataclasses.asdict(t) for t in make_tasks(2)]
    del records[1]["world_seed"]
    (tmp_path / "old.json").write_text(json.dumps(records))
    with pytest.raises(episodes.DataError, match=r"old.json: record 1: .*'world_seed'"):
        episodes.load_tasks(str(tmp_path / "old.json"))


def play(task, moves: list[str]):
    [e] = run_episodes(lambda active: [moves[min(a.agent_turns, len(moves) - 1)] for a in active], [task], 1,
                       turn_limit=len(moves) + 1)
    return e


def tool_call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_a_status_said_before_a_write_it_then_made_does_not_contradict_the_result():
    """Check, say what it is and ask to go ahead, cancel on the user's yes, say the result: the first answer named
    'pending', the last 'cancelled', and the write in between made the first one out of date, not a contradiction."""
    task = next(t for t in make_tasks(200) if len(t.requests) == 1 and t.requests[0].flow == "cancel"
                and t.requests[0].report == ["cancelled"])
    order, reason = task.requests[0].details["order_id"], task.requests[0].details["reason"]
    e = play(task, ["Hello! How can I help you today?"] * task.greeting + [
        tool_call("get_order_details", order_id=order),
        f"Your order {order} is pending. Do you want me to cancel it?",
        tool_call("cancel_pending_order", order_id=order, reason=reason),
        f"Your order {order} has been cancelled."])
    assert ("user", "Yes, please.") in e.events
    assert e.ended_by == "user" and score([e], 1)["task_success"] == 1.0


def test_a_value_on_its_own_line_before_a_question_is_told():
    task = next(t for t in make_tasks(200) if len(t.requests) == 1 and t.requests[0].flow == "status"
                and not t.requests[0].withheld)
    order, [status] = task.requests[0].details["order_id"], task.requests[0].report
    e = play(task, ["Hello! How can I help you today?"] * task.greeting + [
        tool_call("get_order_details", order_id=order), f"Status: {status}\nAnything else I can help with?"])
    assert e.ended_by == "user" and score([e], 1)["task_success"] == 1.0
