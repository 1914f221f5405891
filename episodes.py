"""Whole conversations on the model's own actions: retail tasks, a scripted user, the episode loop, tau-bench's metrics.

    python eval.py --episodes 100 --model runs/pipeline/grpo [--trials 4] [--show 2]    (the table; eval.py)
    python episodes.py tasks --n 100 --out tasks.json                                   (the tasks, as a file)

Turn-level evaluation scores one next action against a reference history. Here the agent's own actions make
the history: its tool calls execute on the episode's own copy of the database and their real outputs come
back (an invalid call gets an error observation, as in tau-bench), and its answers go to a scripted user.

A task (held-out retail users only, never a training user) is one or two retail requests, each with the details
the user knows, the one it leaves out at first (as the clarifying-question flows do), the gold tool calls that
reach the goal, and the values the agent must tell the user. The scripted user opens (often with a greeting),
states a request, answers a question that asks for a detail it knows with exactly that detail ("I don't know"
otherwise), confirms when asked, moves to its next request once the agent has told the values of this one (`told`),
thanks and ends after the last; its phrasing comes from the same pools as the training data (worlds.USER_SAYS).
It is rule-based and seeded per (task, trial): the same agent actions give the same transcript.

Metrics (tau-bench, Yao et al. 2024), per episode and over tasks:
    end-state success     the database after the episode == the database after the gold writes (writes only:
                          reads change nothing); a write the policy forbids (cancelling an order that is not
                          pending, returning one not delivered) is carried out as a careless backend would, and
                          counted as a policy violation: the end state is then wrong
    communicated success  every request's values told and obtained (`told`, `obtained`): the user moved on from each
                          request because what the agent asserted about it names exactly the values to report
                          (a value of the same kind that is not one of them -- another status, amount or street
                          address -- contradicts them: a sentence naming every status tells the user nothing;
                          questions assert nothing; the policy phrase "only pending orders can be cancelled" is
                          not a status report; a write that goes through starts the count again), and each value
                          had come back in a tool output of the episode before the answer that told it (a value
                          it never read is a guess, however right)
    task success          both (task_success_ci: its 95% bootstrap interval over tasks, stats.mean_ci)
    pass^k                for a task with c successes in n >= k trials: C(c, k) / C(n, k); the mean over tasks
    turns, tool errors, policy violations: means per episode; and task success per flow
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import ChainMap
from dataclasses import asdict, dataclass, field
from math import comb
from typing import Callable

from pathlib import Path

from cli import run_cli
from data import Action, DataError, TurnSample, read_records, write_json_atomic
from stats import mean_ci
from toolcalls import parse_completion
from worlds import GREETINGS, RETAIL, STREETS, THANKS, USER_SAYS, address, pick_order, retail_world

FLOWS = ("status", "cancel", "return", "address", "product", "two orders", "new address")
ASK_NOUN = {"order_id": "order id", "email": "email address", "user_id": "user id"}   # as the training agent asks
DETAIL_WORDS = {"order_id": ("order id", "order number"), "email": ("email",), "user_id": ("user id",)}
SAY_DETAIL = {"order_id": "order id", "email": "email", "user_id": "user id"}   # keys of worlds.USER_SAYS
CONFIRM_WORDS = ("confirm", "proceed", "should i", "shall i", "do you want", "would you like me")
DONT_KNOW = "I'm sorry, I don't know that."
NUDGE = "Can you help me with that?"
VALUE_KINDS = {   # what a reported value can be: each kind's pattern finds every value of that kind in a text
    "status": re.compile(r"\b(?:pending|processed|delivered|cancelled|return requested)\b"),
    "amount": re.compile(r"\b\d+\.\d\d\b"),
    "street address": re.compile(r"\b\d{1,2} (?:%s)\b" % "|".join(s.lower() for s in STREETS)),
}
POLICY_PHRASE = re.compile(r"only [a-z ]+? orders can be [a-z]+")   # "only pending orders can be cancelled"


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
@dataclass
class Request:
    flow: str
    text: str                   # the request as the user first states it (without the withheld detail)
    details: dict               # what the user knows: order_id, email, user_id, ...
    withheld: str | None        # the detail the user leaves out at first, or None
    gold: list[list[dict]]      # the gold actions: each a list of (parallel) calls {"name", "arguments"}
    report: list[str]           # values the agent must tell the user
    answer: str                 # a reference answer that reports them


@dataclass
class Task:
    task_id: str
    user_id: str
    email: str
    greeting: bool
    requests: list[Request]
    world_seed: int             # the seed of the database its gold actions and values come from (worlds.retail_world)

    @property
    def flows(self) -> list[str]:
        return [r.flow for r in self.requests]


def overlay(db: dict) -> dict:
    """A copy-on-write view of the database: writes go to a fresh top map, the shared rows stay untouched."""
    return {table: ChainMap({}, rows) for table, rows in db.items()}


def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def make_request(flow: str, user: dict, db: dict, rng: random.Random) -> Request:
    """One request of `flow` for `user`, its gold calls executed on `db` (an overlay: later requests see the writes)."""
    def run(c: dict) -> dict:
        return RETAIL.tools[c["name"]].run(db, c["arguments"])
    if flow == "status":
        o = pick_order(db, rng, user)
        withheld = "order_id" if rng.random() < 0.3 else None
        text = rng.choice(USER_SAYS["status, no id" if withheld else "status"]).format(**o)
        gold = [[call("get_order_details", order_id=o["order_id"])]]
        return Request(flow, text, {"order_id": o["order_id"]}, withheld, gold, [o["status"]],
                       f"Your order {o['order_id']} is {o['status']}.")
    if flow in ("cancel", "return"):
        wanted = "pending" if flow == "cancel" else "delivered"
        o = pick_order(db, rng, user, wanted if rng.random() < 0.6 else None)
        check = [call("get_order_details", order_id=o["order_id"])]
        if flow == "cancel":
            reason = rng.choice(["no longer needed", "ordered by mistake"])
            details = {"order_id": o["order_id"], "reason": reason}
            text = rng.choice(USER_SAYS["cancel"]).format(**details)
            write = call("cancel_pending_order", order_id=o["order_id"], reason=reason)
        else:
            item = rng.choice(o["items"])
            details = {"order_id": o["order_id"], "item": item["name"]}
            text = rng.choice(USER_SAYS["return"]).format(**details)
            write = call("return_delivered_order_items", order_id=o["order_id"], item_ids=[item["product_id"]])
        if o["status"] != wanted:   # the policy forbids it: the agent checks, then refuses and says why
            return Request(flow, text, details, None, [check], [o["status"]],
                           f"I'm sorry, but order {o['order_id']} is {o['status']}, and only {wanted} orders can be "
                           f"{'cancelled' if flow == 'cancel' else 'returned'}.")
        result = run(write)
        report = ["cancelled"] if flow == "cancel" else [result["refund"]]
        return Request(flow, text, details, None, [check, [write]], report,
                       f"Done: order {o['order_id']} is {result['status']}"
                       + (f", with a refund of {result['refund']}." if flow == "return" else "."))
    if flow == "address":
        withheld = "email" if rng.random() < 0.3 else None
        text = rng.choice(USER_SAYS["address, no email" if withheld else "address"]).format(**user)
        where = db["users"][user["user_id"]]["address"]
        gold = [[call("find_user_id_by_email", email=user["email"])],
                [call("get_user_details", user_id=user["user_id"])]]
        return Request(flow, text, {"email": user["email"]}, withheld, gold, [where["address1"]],
                       f"The address on your account is {where['address1']}, {where['city']}, {where['zip']}.")
    if flow == "product":
        p = db["products"][rng.choice(sorted(db["products"]))]
        text = rng.choice(USER_SAYS["product"]).format(product_id=p["product_id"])
        return Request(flow, text, {"product_id": p["product_id"]}, None,
                       [[call("get_product_details", product_id=p["product_id"])]], [p["price"]],
                       f"The {p['name']} costs {p['price']}.")
    if flow == "two orders":
        a, b = rng.sample([db["orders"][o] for o in user["orders"]], 2)
        text = rng.choice(USER_SAYS["two orders"]).format(a=a["order_id"], b=b["order_id"])
        gold = [[call("get_order_details", order_id=a["order_id"]), call("get_order_details", order_id=b["order_id"])]]
        return Request(flow, text, {"a": a["order_id"], "b": b["order_id"]}, None, gold,
                       sorted({a["status"], b["status"]}),
                       f"Order {a['order_id']} is {a['status']} and order {b['order_id']} is {b['status']}.")
    if flow == "new address":
        new = address(rng)
        where = f"{new['address1']}, {new['city']}, {new['zip']}"
        withheld = "user_id" if rng.random() < 0.3 else None
        text = rng.choice(USER_SAYS["new address, no id" if withheld else "new address"]).format(where=where, **user)
        write = call("modify_user_address", user_id=user["user_id"], **new)
        run(write)
        return Request(flow, text, {"user_id": user["user_id"]}, withheld, [[write]], [new["address1"]],
                       f"Done! Your address is now {where}.")
    raise ValueError(f"unknown flow {flow!r} (one of {FLOWS})")


def make_tasks(n: int, seed: int = 0, split: str = "test") -> list[Task]:
    """n tasks of held-out retail users (split "test": evaluation), or of training users (split "train": grpo.py
    --episodes; split "val": other tasks of the same users, drawn apart, to choose a configuration on without looking
    at the held-out users, as the demo data's val conversations are), on the database the demo data was generated
    from (seeded)."""
    db, train_users, test_users = retail_world(random.Random(seed))
    users, stream, prefix = {"test": (test_users, "episode tasks", "task"),
                             "train": (train_users, "training episode tasks", "train"),
                             "val": (train_users, "validation episode tasks", "val")}[split]
    rng = random.Random(f"{stream} {seed}")
    tasks = []
    for i in range(n):
        user = rng.choice(users)
        state = overlay(db)
        flows = rng.sample(FLOWS, rng.choice([1, 1, 2]))
        requests = [make_request(flow, user, state, rng) for flow in flows]
        tasks.append(Task(f"{prefix}{i}", user["user_id"], user["email"], rng.random() < 0.6, requests, seed))
    return tasks


def world_db(seed: int) -> dict:
    """The retail database that make_tasks(seed=seed) made its tasks on."""
    return retail_world(random.Random(seed))[0]


def task_from_dict(d: dict) -> Task:
    return Task(d["task_id"], d["user_id"], d["email"], d["greeting"], [Request(**r) for r in d["requests"]],
                d["world_seed"])


def load_tasks(spec: str, seed: int = 0, split: str = "test") -> list[Task]:
    """--episodes N (make_tasks of `split` on the database of `seed`) or a tasks file written by `python episodes.py
    tasks`, whose tasks carry the seed of their own database (so the file, not the run's --seed, says which world it
    is)."""
    if spec.isdigit():
        return make_tasks(int(spec), seed, split)
    tasks = []
    for i, d in enumerate(read_records(spec)):
        try:
            tasks.append(task_from_dict(d))
        except (KeyError, TypeError) as e:
            raise DataError(f"{spec}: record {i}: not a task of `python episodes.py tasks` (field {e}; a file "
                            "without 'world_seed' is from an older version: write it again)") from None
    return tasks


def goal_state(task: Task, db: dict) -> dict:
    """The database after the task's gold writes, on a fresh overlay."""
    state = overlay(db)
    for request in task.requests:
        for action in request.gold:
            for c in action:
                RETAIL.tools[c["name"]].run(state, c["arguments"])
    return state


# ----------------------------------------------------------------------------------------------
# The scripted user
# ----------------------------------------------------------------------------------------------
class ScriptedUser:
    """Plays a task's user by rule (module docstring); seeded, so the same agent actions give the same replies."""

    def __init__(self, task: Task, seed: int):
        self.task, self.rng = task, random.Random(f"{task.task_id} {seed}")
        self.index, self.heard, self.nudged = 0, "", 0
        self.requested = self.ended = False

    def opening(self) -> str:
        return self.rng.choice(GREETINGS) if self.task.greeting else self.state_request()

    def state_request(self) -> str:
        self.heard, self.nudged, self.requested = "", 0, True
        return self.task.requests[self.index].text

    def database_changed(self) -> None:
        """A write went through: what the agent said before it ("it is pending; shall I cancel it?") may be out of
        date, so only what it says from now on counts."""
        self.heard = ""

    def detail_asked(self, text: str) -> str | None:
        if "?" not in text and "please give" not in text and "please provide" not in text:
            return None
        return next((k for k, words in DETAIL_WORDS.items() if any(w in text for w in words)), None)

    def reply(self, agent_text: str) -> str:
        """The user's answer to an agent message; self.ended is set when it is the closing one."""
        text = agent_text.lower()
        if not self.requested:   # the agent answered the greeting
            return self.state_request()
        request = self.task.requests[self.index]
        self.heard += " " + text
        if told(request, self.heard):
            self.index += 1
            if self.index == len(self.task.requests):
                self.ended = True
                return self.rng.choice(THANKS)
            return self.state_request()
        asked = self.detail_asked(text)
        if asked:   # a user knows its own email and user id, and the details of its request
            known = {"email": self.task.email, "user_id": self.task.user_id, **request.details}
            if asked not in known:
                return DONT_KNOW
            return self.rng.choice(USER_SAYS[SAY_DETAIL[asked]]).format(**{asked: known[asked]})
        if "?" in text and any(w in text for w in CONFIRM_WORDS):
            return "Yes, please."
        self.nudged += 1
        return NUDGE if self.nudged == 1 else DONT_KNOW


def told(request: Request, heard: str) -> bool:
    """What the agent asserted about the request (`heard`) names exactly its values to report: for each kind of value
    the request reports, the values of that kind in the assertions == the request's values of it."""
    named = values_named(assertions(heard))
    return all(named[kind] == values for kind, values in values_to_report(request).items())


def assertions(text: str) -> str:
    """The text without its questions: a sentence (split at . ! ? and line breaks) that ends in '?' asserts nothing."""
    return " ".join(s for s in re.split(r"(?<=[.!?])\s+|\n", text) if not s.rstrip().endswith("?"))


def values_named(text: str) -> dict[str, set[str]]:
    """The values of each kind (VALUE_KINDS) a text names, lower case; the policy's own phrase ("only pending orders
    can be cancelled") names no status."""
    text = POLICY_PHRASE.sub("", text.lower())
    return {kind: set(pattern.findall(text)) for kind, pattern in VALUE_KINDS.items()}


def values_to_report(request: Request) -> dict[str, set[str]]:
    """The request's values to report by kind, lower case (a value of no kind is the task's error, not the agent's)."""
    by_kind: dict[str, set[str]] = {}
    for value in request.report:
        kind = next((k for k, pattern in VALUE_KINDS.items() if pattern.fullmatch(value.lower())), None)
        if kind is None:
            raise ValueError(f"{value!r}: a value to report of no kind in VALUE_KINDS")
        by_kind.setdefault(kind, set()).add(value.lower())
    return by_kind


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------
POLICY_WRITES = {"cancel_pending_order": ("pending", "cancelled"),
                 "return_delivered_order_items": ("delivered", "return requested")}
WRITES = {*POLICY_WRITES, "modify_user_address"}


@dataclass
class Episode:
    """One trial of one task: the database copy, the chat so far, the user, and what happened."""
    task: Task
    trial: int
    db: dict
    user: ScriptedUser
    messages: list[dict] = field(default_factory=list)
    said: list[str] = field(default_factory=list)        # the agent's answers
    events: list[tuple[str, str]] = field(default_factory=list)   # (who, text) in order, for the transcript
    agent_turns: int = 0
    tool_errors: int = 0
    violations: int = 0
    format_errors: int = 0
    obtained: list[bool] = field(default_factory=list)   # per request told: its values came back from a tool first
    done: bool = False
    ended_by: str = ""

    def context(self) -> TurnSample:
        """The conversation so far, as a turn sample whose target is to be written (reasoning never kept)."""
        return TurnSample(f"{self.task.task_id}/{self.trial}", RETAIL.system,
                          [t.schema() for t in RETAIL.tools.values()], list(self.messages), Action())

    def execute(self, c: dict) -> dict:
        """A tool call of the agent on the episode's database: its real output, or an error observation."""
        tool = RETAIL.tools.get(c["name"])
        if tool is None:
            self.tool_errors += 1
            return {"error": f"unknown tool {c['name']}"}
        args = c["arguments"]
        refused = tool.invalid(args)   # model output: no value of any JSON type may reach the tool's code unchecked
        if refused:
            self.tool_errors += 1
            return {"error": refused}
        if c["name"] in POLICY_WRITES:   # a careless backend: the write happens, the policy is broken
            needed, new_status = POLICY_WRITES[c["name"]]
            o = self.db["orders"].get(args.get("order_id"))
            if isinstance(o, dict) and o["status"] != needed:
                self.violations += 1
                self.db["orders"][o["order_id"]] = {**o, "status": new_status}
                return {"order_id": o["order_id"], "status": new_status}
        try:
            result = tool.run(self.db, args)
        except (TypeError, ValueError, AttributeError, KeyError) as e:   # arguments of the wrong type
            result = {"error": f"invalid arguments ({type(e).__name__})"}
        if isinstance(result, dict) and "error" in result:
            self.tool_errors += 1
        return result

    def say_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        self.events.append(("user", text))

    def step(self, completion: str, turn_limit: int, special_tokens: frozenset[str] = frozenset(),
             fits: Callable[["Episode"], bool] | None = None) -> None:
        """Take the agent's completion: tool calls run and their outputs are appended; an answer goes to the user.
        special_tokens: the agent's tokenizer's control tokens, a format error inside a completion. fits: whether
        the conversation so far still fits the agent's prompt; one that does not ends the episode as the turn limit
        does, before a turn it could not read whole (grpo.py's --max-prompt-len)."""
        parsed = parse_completion(completion, special_tokens)
        self.agent_turns += 1
        self.format_errors += bool(parsed.errors)
        if parsed.reasoning:
            self.events.append(("thinks", parsed.reasoning))
        if parsed.tool_calls:
            self.messages.append(Action(parsed.answer, parsed.tool_calls).message())
            for c in parsed.tool_calls:
                result = self.execute(c)
                if c["name"] in WRITES and "error" not in result:
                    self.user.database_changed()
                observation = json.dumps(result)
                self.messages.append({"role": "tool", "content": observation})
                self.events += [("calls", f"{c['name']}({json.dumps(c['arguments'])})"), ("tool", observation)]
        else:
            self.messages.append(Action(parsed.answer).message())
            self.said.append(parsed.answer)
            self.events.append(("agent", parsed.answer))
            request = self.user.index
            self.say_user(self.user.reply(parsed.answer))
            if self.user.index > request:   # this answer told the request's values: had the agent read them?
                read = values_named(" ".join(m["content"] for m in self.messages if m["role"] == "tool"))
                wanted = values_to_report(self.task.requests[request])
                self.obtained.append(all(values <= read[kind] for kind, values in wanted.items()))
            if self.user.ended:
                self.done, self.ended_by = True, "user"
        if not self.done and (self.agent_turns >= turn_limit or (fits is not None and not fits(self))):
            self.done, self.ended_by = True, "turn limit"


Agent = Callable[[list[Episode]], list[str]]   # the active episodes -> one completion each


def run_episodes(agent: Agent, tasks: list[Task], trials: int, turn_limit: int,
                 progress: Callable[[int], None] | None = None, special_tokens: frozenset[str] = frozenset(),
                 user_seed: int | None = None, fits: Callable[[Episode], bool] | None = None) -> list[Episode]:
    """trials episodes of each task, each on a copy of its task's own database, stepped together: each round, every
    active episode gets one agent action (special_tokens and fits: see Episode.step). Trial
    k's user is seeded k, or every trial's user_seed when given (GRPO's group: the same user, so the trials differ
    by the agent only)."""
    dbs = {seed: world_db(seed) for seed in {t.world_seed for t in tasks}}
    episodes = []
    for task in tasks:
        for k in range(trials):
            user = ScriptedUser(task, k if user_seed is None else user_seed)
            e = Episode(task, k, overlay(dbs[task.world_seed]), user)
            e.say_user(e.user.opening())
            episodes.append(e)
    while active := [e for e in episodes if not e.done]:
        for e, completion in zip(active, agent(active)):
            e.step(completion, turn_limit, special_tokens, fits)
        if progress:
            progress(sum(e.done for e in episodes))
    return episodes


def gold_agent(episodes: list[Episode]) -> list[str]:
    """The reference agent: plays each task's gold actions (asking first for a withheld detail), then its answer."""
    return [gold_moves(e.task)[e.agent_turns] for e in episodes]


def gold_moves(task: Task) -> list[str]:
    moves = ["Hello! How can I help you today?"] if task.greeting else []
    for r in task.requests:
        if r.withheld:
            moves.append(f"Sure, I can help with that. Could you please give me the {ASK_NOUN[r.withheld]}?")
        moves += ["\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in action) for action in r.gold]
        moves.append(r.answer)
    return moves


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def end_state_ok(episode: Episode, goal: dict) -> bool:
    """The episode's database equals the goal state on every row either of them wrote."""
    for table, rows in episode.db.items():
        written = set(rows.maps[0]) | set(goal[table].maps[0])
        if any(rows.get(k) != goal[table].get(k) for k in written):
            return False
    return True


def communicated_ok(episode: Episode) -> bool:
    """Every request told (the user moved on from each: ScriptedUser.reply, told) with values it had obtained."""
    return len(episode.obtained) == len(episode.task.requests) and all(episode.obtained)


def pass_hat_k(successes: list[int], n: int, k: int) -> float:
    """tau-bench's pass^k: the mean over tasks of C(c, k) / C(n, k), c = successes of the task's n trials."""
    return sum(comb(c, k) for c in successes) / (comb(n, k) * len(successes))


def judged(episodes: list[Episode]) -> list[tuple[Episode, bool, bool]]:
    """(episode, end state right, result communicated) for each episode; success is both."""
    tasks = {e.task.task_id: e.task for e in episodes}.values()
    dbs = {seed: world_db(seed) for seed in {t.world_seed for t in tasks}}
    goals = {t.task_id: goal_state(t, dbs[t.world_seed]) for t in tasks}
    return [(e, end_state_ok(e, goals[e.task.task_id]), communicated_ok(e)) for e in episodes]


def task_successes(episodes: list[Episode]) -> dict[str, int]:
    """Successful trials of each task, in task order."""
    per_task: dict[str, int] = {}
    for e, state, communicated in judged(episodes):
        per_task[e.task.task_id] = per_task.get(e.task.task_id, 0) + (state and communicated)
    return per_task


def score(episodes: list[Episode], trials: int) -> dict:
    """The episode table's row (module docstring)."""
    results, per_task = judged(episodes), task_successes(episodes)
    n = len(results)
    row = {"tasks": len(per_task), "trials": trials, "end_state": sum(r[1] for r in results) / n,
           "communicated": sum(r[2] for r in results) / n, "task_success": sum(r[1] and r[2] for r in results) / n}
    row["task_success_ci"] = list(mean_ci([[c / trials for c in per_task.values()]])[1:])   # 95%, over tasks
    row.update({f"pass^{k}": pass_hat_k(list(per_task.values()), trials, k) for k in range(1, trials + 1)})
    row.update(turns=sum(e.agent_turns for e in episodes) / n, tool_errors=sum(e.tool_errors for e in episodes) / n,
               violations=sum(e.violations for e in episodes) / n, turn_limit=sum(e.ended_by == "turn limit"
                                                                                 for e in episodes) / n)
    for flow in FLOWS:
        mine = [r[1] and r[2] for r in results if flow in r[0].task.flows]
        row[f"flow: {flow}"] = sum(mine) / len(mine) if mine else None
    return row


def transcript(e: Episode) -> str:
    """An episode as a readable transcript: user turns, the agent's reasoning, calls and answers, observations."""
    head = (f"=== {e.task.task_id} trial {e.trial} ({' + '.join(e.task.flows)}): ended by {e.ended_by}, "
            f"{e.agent_turns} agent turns, {e.tool_errors} tool errors, {e.violations} policy violations")
    return "\n".join([head] + [f"{who:>7}: {text}" for who, text in e.events])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write episode tasks (by default of held-out retail users) to a file.")
    p.add_argument("command", choices=["tasks"])
    p.add_argument("--n", type=int, default=100, help="tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="test: held-out users; val, "
                   "train: training users (make_tasks)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    def body():
        write_json_atomic(Path(args.out), [asdict(t) for t in make_tasks(args.n, args.seed, args.split)])
        print(f"wrote {args.n} tasks to {args.out}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
