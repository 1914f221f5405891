import json

import pytest

import eval as evaluation
from data import Action, TurnSample
from eval import aggregate, conversation_success, score_turn, turn_success
from rewards import r_decision as decision_correct
from rewards import r_format as format_ok
from toolcalls import parse_completion

CALL = '<tool_call>\n{"name": "get_order_details", "arguments": {"order_id": "W1"}}\n</tool_call>'
REF_CALL = Action("", [{"name": "get_order_details", "arguments": {"order_id": "W1"}}])
REF_ANSWER = Action("Your order W1 is delivered.")


def sample(ref, cid="c"):
    return TurnSample(cid, "S", [], [{"role": "user", "content": "q"}], ref)


def test_turn_metrics_by_hand():
    assert format_ok(parse_completion(CALL), False, thinking=False)
    assert not format_ok(parse_completion(CALL), True, thinking=False)            # truncated
    assert not format_ok(parse_completion(CALL), False, thinking=True)            # think block missing
    assert format_ok(parse_completion("<think>\nr\n</think>\n\n" + CALL), False, thinking=True)
    assert decision_correct(parse_completion(CALL), REF_CALL)
    assert not decision_correct(parse_completion("Sure."), REF_CALL)
    assert turn_success(parse_completion(CALL), False, REF_CALL)
    wrong_arg = CALL.replace("W1", "W2")
    assert not turn_success(parse_completion(wrong_arg), False, REF_CALL)
    # answer "your order w1 is delivered" vs "order w1 delivered": overlap 3, F1 = 6/8 = 0.75 >= 0.5
    assert turn_success(parse_completion("Order W1 delivered"), False, REF_ANSWER)
    # "it is pending" vs reference: overlap {is} = 1, F1 = 2/(3+5) = 0.25 < 0.5
    assert not turn_success(parse_completion("It is pending"), False, REF_ANSWER)


def test_aggregate_and_conversation_success_by_hand():
    results = [
        score_turn(sample(REF_CALL, "a"), CALL, False, False),                         # success
        score_turn(sample(REF_ANSWER, "a"), "Your order W1 is delivered.", False, False),  # success
        score_turn(sample(REF_CALL, "b"), CALL.replace("W1", "W9"), False, False),    # right name, wrong value
        score_turn(sample(REF_ANSWER, "b"), CALL, False, False),                       # wrong decision
    ]
    m = aggregate(results)
    assert m["turns"] == 4
    assert m["decision_acc"] == 3 / 4
    assert m["tool_name_acc"] == 1.0           # both tool turns call get_order_details
    assert m["exact_match"] == 1 / 2
    assert m["arg_f1"] == (1.0 + 0.0) / 2      # second call: its only triple differs
    assert m["answer_f1"] == (1.0 + 0.0) / 2   # the call produced no answer text
    assert m["turn_success"] == 2 / 4
    assert m["conv_success"] == 1 / 2          # conversation a all right, b not
    assert conversation_success(results[:2]) == 1.0
    assert m["format_rate"] == 1.0 and m["reasoning_words"] == 0
    # thinking off, efficiency 1: R = 0.1 + 0.2 + 0.6 x + 0.1 with x = 1, 1, 2/3 (value wrong: (1 + 1 + 0) / 3),
    # and the wrong decision: 0.1 + 0 + 0.1
    assert abs(m["reward"] - sum([1.0, 1.0, 0.4 + 0.6 * 2 / 3, 0.2]) / 4) < 1e-12


def test_plot_series_and_moving_average(tmp_path):
    import plot
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "eval": {}}\n{"step": 1, "reward": {"total": 0.5}}\n{"step": 2, "reward": {"total": 1.0}}\n')
    assert plot.series(log, "reward.total") == [(1, 0.5), (2, 1.0)]
    assert plot.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plot.main([str(log), "--key", "reward.total", "--out", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().startswith("<svg")


def reference_completions(reasoning_words: int, think: bool):
    """A fake generate_texts: every sample's own reference action, after a trace of `reasoning_words` words."""
    def generate_texts(model, tokenizer, samples, thinking, *args, **kwargs):
        out = []
        for s in samples:
            action = "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in s.target.tool_calls) \
                if s.target.is_tool_call else s.target.content
            trace = f"<think>\n{' '.join(['word'] * reasoning_words)}\n</think>\n\n" if think else ""
            out.append((trace + action, False))
        return out
    return generate_texts


def test_the_evaluation_scores_the_reward_the_run_trained_on(tmp_path, demo_dir, monkeypatch):
    """By hand, every action right after a 150-word trace: budget 256 gives 0.1 + 0.2 + 0.6 + 0.1 = 1.0 (budget 64:
    efficiency max(0, 1 - 86/64) = 0, so 0.9). The right action with no trace, thinking on: the paper's design gives
    0.2 + 0.6 = 0.8, binary (format x correct) gives 0."""
    import grpo
    from model import load, save
    data = str(demo_dir / "retail_test.json")
    model, tok = load("tiny-random")
    common = ["--model", "tiny-random", "--eval-data", data, "--eval-limit", "6"]
    monkeypatch.setattr(evaluation, "generate_texts", reference_completions(150, think=True))
    long_budget = grpo.parse_args(common + ["--think-budget", "256"])
    assert evaluation.held_out_evaluator(long_budget, tok, True)(model)["reward"] == pytest.approx(1.0)
    assert evaluation.held_out_evaluator(grpo.parse_args(common), tok, True)(model)["reward"] == pytest.approx(0.9)
    monkeypatch.setattr(evaluation, "generate_texts", reference_completions(0, think=False))
    binary = grpo.parse_args(common + ["--reward", "binary"])
    assert evaluation.held_out_evaluator(binary, tok, True)(model)["reward"] == 0.0
    assert evaluation.held_out_evaluator(grpo.parse_args(common), tok, True)(model)["reward"] == pytest.approx(0.8)
    # eval.py on a run's directory reads the reward from the run's args.json
    save(model, tok, tmp_path / "run")
    (tmp_path / "run" / "args.json").write_text(json.dumps(vars(long_budget)))
    monkeypatch.setattr(evaluation, "generate_texts", reference_completions(150, think=True))
    assert evaluation.main(["--model", str(tmp_path / "run"), "--data", data, "--limit", "6",
                            "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())[str(tmp_path / "run")]["reward"] == pytest.approx(1.0)


def test_resume_keeps_the_rows_already_written_and_evaluates_the_rest(tmp_path, demo_dir, capsys):
    """A killed multi-model evaluation keeps its finished rows: the file is written after each model, and --resume
    evaluates only the rows the file lacks (a kept row is the same object, its timing included), on the same work."""
    out, data = tmp_path / "results.json", str(demo_dir / "retail_test.json")
    common = ["--data", data, "--limit", "3", "--max-new-tokens", "4", "--out", str(out)]
    assert evaluation.main(["--model", "tiny-random", "--name", "a"] + common) == 0
    first = json.loads(out.read_text())["a"]
    assert len(first["successes"]) == 3 and first["turns"] == 3
    assert evaluation.main(["--model", "tiny-random", "--name", "a", "--model", "tiny-random", "--name", "b",
                            "--baseline", "a", "--resume"] + common) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == ["a", "b"] and rows["a"]["seconds"] == first["seconds"]
    assert rows["b"]["successes"] == first["successes"]       # the same model on the same turns: the same verdicts
    assert rows["b"]["turn_success_minus_a"] == [0.0, 0.0, 0.0]
    other = ["--model", "tiny-random", "--name", "a", "--resume"] + common
    other[other.index("3")] = "2"                             # fewer turns than the kept row was evaluated on
    assert evaluation.main(other) == 2
    assert "row 'a' has turns 3, this command 2" in capsys.readouterr().err


@pytest.mark.parametrize("flag, first, then, message", [
    ("--max-new-tokens", "4", "5", "max_new_tokens 4, this command 5"),
    ("--precision", "fp32", "bf16", "precision 'fp32', this command 'bf16'"),
    ("--thinking", "off", "on", "thinking False, this command True"),
    ("--model", "tiny-random", "tiny", "model 'tiny-random', this command 'tiny'"),   # another model, the same name
])
def test_resume_refuses_a_row_made_under_other_settings(tmp_path, demo_dir, capsys, flag, first, then, message):
    """Each of these changes the row's completions (or is another model): --resume keeps a row only if made under
    the same, and otherwise names the setting."""
    out = tmp_path / "results.json"
    common = ["--name", "a", "--data", str(demo_dir / "retail_test.json"), "--limit", "2", "--out", str(out)]
    defaults = {"--max-new-tokens": "4", "--precision": "fp32", "--thinking": "off", "--model": "tiny-random"}
    made = [x for f, v in {**defaults, flag: first}.items() for x in (f, v)]
    assert evaluation.main(made + common) == 0
    written = out.read_text()
    capsys.readouterr()
    changed = [x for f, v in {**defaults, flag: then}.items() for x in (f, v)]
    assert evaluation.main(changed + common + ["--resume"]) == 2
    assert f"row 'a' has {message}; remove the file or drop --resume" in capsys.readouterr().err
    assert out.read_text() == written
    assert evaluation.main(made + common + ["--resume"]) == 0   # the same settings: the row is kept
    assert out.read_text() == written


def test_resume_refuses_an_episode_row_made_with_another_completion_budget(tmp_path, capsys):
    out = tmp_path / "results.json"
    common = ["--model", "tiny-random", "--name", "a", "--episodes", "1", "--trials", "1", "--out", str(out)]
    assert evaluation.main(common + ["--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert evaluation.main(common + ["--max-new-tokens", "5", "--resume"]) == 2
    assert "row 'a' has max_new_tokens 4, this command 5" in capsys.readouterr().err


def test_the_out_file_keeps_each_completion_and_show_puts_the_models_side_by_side(tmp_path, demo_dir, capsys):
    """--out keeps every held-out turn's decoded completion, which re-scored gives that turn's stored verdict; --show 2
    prints the first two turns' reference actions (from the data file) and both models' completions."""
    from data import load_turn_samples
    from model import load
    out, data = tmp_path / "results.json", str(demo_dir / "retail_test.json")
    assert evaluation.main(["--model", "tiny", "--name", "a", "--model", "tiny-random", "--name", "b", "--data", data,
                            "--limit", "3", "--max-new-tokens", "24", "--show", "2", "--out", str(out)]) == 0
    printed, rows = capsys.readouterr().out, json.loads(out.read_text())
    samples = load_turn_samples(data)[0][:3]
    special = evaluation.special_tokens(load("tiny")[1])
    for name in ("a", "b"):
        assert len(rows[name]["completions"]) == 3
        for s, text, ok in zip(samples, rows[name]["completions"], rows[name]["successes"]):
            assert float(turn_success(parse_completion(text, special), False, s.target)) == ok or ok == 0.0
        for text in rows[name]["completions"][:2]:
            assert f"{name} [" in printed and text.strip()[:600] in printed
    for s in samples[:2]:
        gold = json.dumps(s.target.tool_calls) if s.target.is_tool_call else s.target.content
        assert f"reference: {gold[:300]}" in printed
    assert printed.count("--- turn ") == 2
