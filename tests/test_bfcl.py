"""eval.py --bfcl (bfcl.py): prompts as BFCL's Qwen FC handler writes them, and BFCL's own runner scoring gold
completions written through this project's text path (the chat template's tool-call format) at the accuracy the gold
can reach, and rejecting perturbed gold. Needs requirements-bfcl.txt and bfcl-eval (the README's test install)."""

import json

import pytest

import bfcl
import eval as evaluation
from data import Action

pytest.importorskip("bfcl_eval", reason="pip install -r requirements-bfcl.txt && pip install --no-deps bfcl-eval")


def unescaped_tools(text: str) -> str:
    """BFCL's hand-written prompt with each tool line written as the chat template's tojson writes it (non-ASCII
    characters as themselves, not as \\u escapes): the one way the two texts differ."""
    head, _, rest = text.partition("<tools>\n")
    tools, _, tail = rest.partition("\n</tools>")
    lines = [json.dumps(json.loads(line), ensure_ascii=False) for line in tools.split("\n")]
    return head + "<tools>\n" + "\n".join(lines) + "\n</tools>" + tail


def test_prompts_are_those_bfcls_qwen_fc_handler_writes(tiny_tokenizer):
    handler, checked = bfcl.handler(), 0
    for category in bfcl.CATEGORIES:
        for entry in bfcl.entries(category, None, with_hint=True):
            ours = bfcl.prompt_text(tiny_tokenizer, entry)
            theirs = handler._format_prompt(entry["question"][0], entry["function"])
            assert ours == (theirs if ours.isascii() else unescaped_tools(theirs)), entry["id"]
            checked += 1
    assert checked == 400 + 200 * 3 + 258 + 1053 + 16 + 24 + 240 + 884 + 16
    assert "Note that the provided function is in Python 3 syntax." in ours   # BFCL's note, added at generation


def first(allowed: list):
    """The first allowed value other than "" (BFCL's mark for "may be omitted"), or "" when that is all."""
    return next((v for v in allowed if v != ""), "")


def chosen(allowed: list):
    """first(allowed), and inside a dict value (or a list of dicts) the same choice for each key: BFCL's
    dict_checker reads a dict answer as {key: [allowed values]}, one level deep."""
    def inner(d: dict) -> dict:
        return {k: first(v) if isinstance(v, list) else v for k, v in d.items()
                if not isinstance(v, list) or any(x != "" for x in v)}
    value = first(allowed)
    if isinstance(value, dict):
        return inner(value)
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [inner(x) for x in value]
    return value


def gold_call(ground_truth: dict, functions: list[dict]) -> dict:
    """One call meeting a ground-truth entry {name: {param: [allowed values]}}: a parameter the schema does not
    require is left out where "" allows it; any other is given its chosen value."""
    (name, params), = ground_truth.items()
    schema = next((f["parameters"] for f in functions if f["name"] == name), {})
    required = set(schema.get("required", []))
    return {"name": name, "arguments": {p: chosen(allowed) for p, allowed in params.items()
                                        if p in required or "" not in allowed}}


def completion_text(tokenizer, entry: dict, action: Action) -> str:
    """The completion a model trained by this project writes for `action`: the chat template's rendering of the
    assistant turn after the prompt, through its EOS (which the sampler drops)."""
    chat = entry["question"][0]
    prompt = tokenizer.apply_chat_template(chat, tools=entry["function"], tokenize=False, add_generation_prompt=True,
                                           enable_thinking=True)
    full = tokenizer.apply_chat_template(chat + [action.message()], tools=entry["function"], tokenize=False,
                                         enable_thinking=True)
    assert full.startswith(prompt) and full.endswith("<|im_end|>\n")
    return full[len(prompt):-len("<|im_end|>\n")]


def gold_completions(tokenizer, perturb=None) -> dict[str, str]:
    answers = {c: {a["id"]: a["ground_truth"] for a in bfcl.bfcl()[0].load_ground_truth_entry(c)}
               for c in bfcl.AST_CATEGORIES}
    out = {}
    for category in bfcl.CATEGORIES:
        for entry in bfcl.entries(category, None, with_hint=False):
            if category in bfcl.AST_CATEGORIES:
                action = Action("", [gold_call(g, entry["function"]) for g in answers[category][entry["id"]]])
            elif category == "live_relevance":   # any call of an offered function is relevant
                action = Action("", [{"name": entry["function"][0]["name"], "arguments": {}}])
            else:
                action = Action("None of the functions I have can do that.")
            out[entry["id"]] = completion_text(tokenizer, entry, perturb(action) if perturb else action)
    return out


def write(path, completions: dict[str, str]):
    path.write_text("".join(json.dumps({"id": k, "completion": v}) + "\n" for k, v in completions.items()))
    return path


def test_gold_through_our_text_path_scores_what_bfcl_says_gold_scores(tmp_path, tiny_tokenizer):
    """Every entry's gold, written in the chat template's tool-call format, scored by BFCL's own runner: all of the
    non-live categories, live_parallel(_multiple) and the (ir)relevance ones pass; live_simple and live_multiple miss
    exactly the entries whose ground truth cannot be met (an empty list of options, a parameter the schema lacks, a
    renamed parameter)."""
    out = tmp_path / "gold.json"
    assert evaluation.main(["--bfcl", ",".join(bfcl.CATEGORIES), "--completions",
                            str(write(tmp_path / "gold.jsonl", gold_completions(tiny_tokenizer))),
                            "--name", "gold", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["gold"]
    for category in bfcl.CATEGORIES:
        if category not in ("live_simple", "live_multiple"):
            assert row[category] == 1.0, category
    failed = {c: sorted(v["id"] for v in row["categories"][c]["verdicts"] if not v["valid"])
              for c in ("live_simple", "live_multiple")}
    assert failed == {"live_simple": ["live_simple_106-63-0", "live_simple_112-68-0"],
                      "live_multiple": ["live_multiple_862-181-3", "live_multiple_964-207-0"]}
    assert row["live_simple"] == pytest.approx(256 / 258) and row["live_multiple"] == pytest.approx(1051 / 1053)
    assert row["non_live_ast"] == 1.0 and row["irrelevance_overall"] == 1.0
    assert row["live_ast"] == pytest.approx((256 + 1051 + 16 + 24) / (258 + 1053 + 16 + 24))


@pytest.mark.parametrize("perturbation", ["drop a call", "wrong value", "no call"])
def test_perturbed_gold_is_rejected(tmp_path, tiny_tokenizer, perturbation):
    def perturb(action: Action) -> Action:
        calls = action.tool_calls
        if not calls:
            return action
        if perturbation == "drop a call":
            return Action("", calls[:-1]) if len(calls) > 1 else Action("", [])
        if perturbation == "wrong value":
            first = calls[0]
            args = {k: (v + 1 if isinstance(v, (int, float)) and not isinstance(v, bool) else "not it")
                    for k, v in first["arguments"].items()}
            return Action("", [{"name": first["name"], "arguments": args}] + calls[1:])
        return Action("I would call a function, but I will not.")
    completions = gold_completions(tiny_tokenizer, perturb)
    out = tmp_path / "perturbed.json"
    categories = "parallel,multiple,live_relevance" if perturbation != "wrong value" else "simple_python,multiple"
    assert evaluation.main(["--bfcl", categories, "--completions", str(write(tmp_path / "p.jsonl", completions)),
                            "--name", "p", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["p"]
    if perturbation == "drop a call":          # every parallel entry has two calls or more; a single call is dropped
        assert row["parallel"] == 0.0 and row["multiple"] == 0.0
    elif perturbation == "wrong value":       # entries with no argument at all cannot be made wrong this way
        assert row["simple_python"] < 0.02 and row["multiple"] < 0.02
    else:
        assert row["parallel"] == 0.0 and row["multiple"] == 0.0 and row["live_relevance"] == 0.0


def test_a_model_runs_through_bfcl_and_a_bad_completions_file_is_an_error(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert evaluation.main(["--model", "tiny", "--bfcl", "simple_python,irrelevance", "--limit", "3",
                            "--max-new-tokens", "16", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["tiny"]
    assert [len(row["categories"][c]["verdicts"]) for c in ("simple_python", "irrelevance")] == [3, 3]
    assert 0.0 <= row["simple_python"] <= 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "simple_python_0", "completion": "x"}\nnot json\n')
    assert evaluation.main(["--bfcl", "simple_python", "--completions", str(bad)]) == 2
    assert f"{bad}: line 2" in capsys.readouterr().err
    assert evaluation.main(["--bfcl", "simple_python,nonsense", "--completions", str(bad)]) == 2
