"""eval.py --bfcl (bfcl.py): the prompts and token budgets BFCL's own request path gives a Qwen FC model, each
category's verdicts read from its own score file, and BFCL's own runner scoring gold completions written through this
project's text path (the chat template's tool-call format) at the accuracy the gold can reach, and rejecting perturbed
gold. Needs requirements-bfcl.txt and bfcl-eval (the README's test install)."""

import copy
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import bfcl
import eval as evaluation
from data import Action
from model import load
from sampling import Generation

pytest.importorskip("bfcl_eval", reason="pip install -r requirements-bfcl.txt && pip install --no-deps bfcl-eval")


def unescaped_tools(text: str) -> str:
    """BFCL's prompt with each tool line written as the chat template's tojson writes it (non-ASCII characters as
    themselves, not as \\u escapes); a prompt without tools (live_irrelevance_120-9-0 offers none) as it is."""
    head, found, rest = text.partition("<tools>\n")
    if not found:
        return text
    tools, _, tail = rest.partition("\n</tools>")
    lines = [json.dumps(json.loads(line), ensure_ascii=False) for line in tools.split("\n")]
    return head + "<tools>\n" + "\n".join(lines) + "\n</tools>" + tail


def bfcl_request(entry: dict, tokenizer, context: int) -> tuple[str, int]:
    """The prompt and max_tokens BFCL's Qwen FC handler sends for an entry, from its own inference path
    (inference_single_turn_prompting -> _query_prompting) with a client that records the request instead of sending
    it to a vLLM server; `context` stands for the served model's max_position_embeddings."""
    sent = {}

    def create(**request):
        sent.update(request)
        return SimpleNamespace(choices=[SimpleNamespace(text="")],
                               usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    handler = copy.copy(bfcl.handler())
    handler.client = SimpleNamespace(completions=SimpleNamespace(create=create))
    handler.tokenizer, handler.max_context_length = tokenizer, context
    handler.inference_single_turn_prompting(copy.deepcopy(entry), include_input_log=False)
    return sent["prompt"], sent["max_tokens"]


def recording_generate(monkeypatch, tokenizer, reply=lambda prompt, max_new_tokens: ("", False)) -> list:
    """eval.py's sampler replaced: each prompt's completion is `reply`'s text (then its EOS, unless `reply` says it
    was cut); returns the list of (prompt ids, max_new_tokens) it saw, in order."""
    seen = []

    def generate(model, prompts, *, eos_ids, pad_id, max_new_tokens, **settings) -> Generation:
        rows, cuts = [], []
        for prompt in prompts:
            seen.append((prompt, max_new_tokens))
            text, cut = reply(prompt, max_new_tokens)
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"] + ([] if cut else [eos_ids[0]]))
            cuts.append(cut)
        width = max(map(len, rows))
        ids, mask = torch.full((len(rows), width), pad_id), torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, :len(row)], mask[k, :len(row)] = torch.tensor(row, dtype=torch.long), 1
        return Generation(torch.zeros((len(rows), 1), dtype=torch.long), torch.ones((len(rows), 1)), ids, mask,
                          torch.tensor(cuts))
    monkeypatch.setattr(evaluation, "generate", generate)
    return seen


TINY_CONTEXT = 2048   # the tiny model's max_position_embeddings (assets/tiny/config.json)


def test_every_prompt_is_the_text_bfcls_qwen_fc_handler_sends(monkeypatch, tiny_tokenizer):
    """The token ids eval.py --bfcl gives the model decode, on every entry of the 11 categories, to the exact prompt
    BFCL's own request path sends to a Qwen FC model."""
    seen = recording_generate(monkeypatch, tiny_tokenizer)
    assert evaluation.main(["--model", "tiny", "--bfcl", ",".join(bfcl.CATEGORIES)]) == 0
    entries = [e for c in bfcl.CATEGORIES for e in bfcl.entries(c, None, with_hint=True)]
    assert len(seen) == len(entries) == 400 + 200 * 3 + 240 + 258 + 1053 + 16 + 24 + 884 + 16   # 3,491
    given = Counter(tiny_tokenizer.decode(ids) for ids, _ in seen)
    theirs = {e["id"]: bfcl_request(e, tiny_tokenizer, TINY_CONTEXT)[0] for e in entries}
    assert [i for i, text in theirs.items() if text not in given] == []
    assert given == Counter(theirs.values())
    assert "Note that the provided function is in Python 3 syntax." in theirs["simple_python_0"]   # BFCL's note


def test_the_chat_template_writes_that_prompt_but_for_non_ascii_tool_docs(tiny_tokenizer):
    """Why a Qwen3-format model is served BFCL's text: its chat template writes the same prompt, but where a tool
    doc holds a non-ASCII character, which its tojson writes as itself and the handler's json.dumps as a \\u
    escape (simple_python_6: "x\\u00b2" in the handler's text, "x²" in the template's)."""
    handler, non_ascii, differ = bfcl.handler(), [], []
    for category in bfcl.CATEGORIES:
        for entry in bfcl.entries(category, None, with_hint=True):
            template = tiny_tokenizer.apply_chat_template(entry["question"][0], tools=entry["function"],
                                                          tokenize=False, add_generation_prompt=True,
                                                          enable_thinking=True)
            theirs = handler._format_prompt(entry["question"][0], entry["function"])
            assert template == unescaped_tools(theirs), entry["id"]
            if template != theirs:
                differ.append(entry["id"])
            if not json.dumps(entry["function"], ensure_ascii=False).isascii():
                non_ascii.append(entry["id"])
    assert differ == non_ascii and len(differ) == 50 and "simple_python_6" in differ


def test_each_category_is_scored_from_its_own_score_file(tmp_path, tiny_tokenizer):
    """Categories whose names end in another's (irrelevance in live_irrelevance, parallel in live_parallel, multiple
    in the *_multiple ones), run after it: each one's verdicts are read from its own score file. Every third entry
    of each category gets a wrong completion (a call where none is due, none where one is), the others their gold,
    so the failing entries are known by construction."""
    categories = ["live_irrelevance", "irrelevance", "live_parallel", "parallel", "parallel_multiple",
                  "live_multiple", "multiple"]
    gold = gold_completions(tiny_tokenizer)
    wrong = gold_completions(tiny_tokenizer, lambda action: Action("I will not call anything.") if action.tool_calls
                             else Action("", [{"name": "some_function", "arguments": {}}]))
    completions, expected = {}, {}
    for category in categories:
        ids = [e["id"] for e in bfcl.entries(category, 12, with_hint=False)]
        expected[category] = ids[::3]
        completions.update({i: (wrong if k % 3 == 0 else gold)[i] for k, i in enumerate(ids)})
    out = tmp_path / "out.json"
    assert evaluation.main(["--bfcl", ",".join(categories), "--completions",
                            str(write(tmp_path / "c.jsonl", completions)), "--limit", "12", "--name", "m",
                            "--out", str(out)]) == 0
    row = json.loads(out.read_text())["m"]
    for category in categories:
        failed = [v["id"] for v in row["categories"][category]["verdicts"] if not v["valid"]]
        assert failed == expected[category], category
        assert row[category] == pytest.approx(8 / 12), category


def test_a_completion_cut_at_max_new_tokens_is_generated_again_at_bfcls_own_limit(monkeypatch, tmp_path,
                                                                                   tiny_tokenizer, capsys):
    """A completion cut at --max-new-tokens (here a thought cut before any call: no call decodes, an irrelevance
    pass) is generated again with the max_tokens BFCL's handler requests for its prompt; what that gives is scored,
    cut or not (a cut one as BFCL's run would score it), and the row counts both kinds of cut."""
    entries = bfcl.entries("irrelevance", 6, with_hint=True)
    requests = {e["id"]: bfcl_request(e, tiny_tokenizer, TINY_CONTEXT) for e in entries}
    entry_of = {tuple(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]): i
                for i, (prompt, _) in requests.items()}
    ids = [e["id"] for e in entries]
    call = '<tool_call>\n{"name": "some_function", "arguments": {}}\n</tool_call>'

    def reply(prompt: list[int], max_new_tokens: int) -> tuple[str, bool]:
        if max_new_tokens == 8:
            return "<think>\nLet me", True
        return (call, False) if ids.index(entry_of[tuple(prompt)]) % 2 == 0 else ("<think>\nStill thinking", True)
    seen = recording_generate(monkeypatch, tiny_tokenizer, reply)
    out = tmp_path / "t.json"
    assert evaluation.main(["--model", "tiny", "--bfcl", "irrelevance", "--limit", "6", "--max-new-tokens", "8",
                            "--batch-size", "1", "--name", "t", "--out", str(out)]) == 0
    assert len(seen) == 12
    assert {entry_of[tuple(p)]: n for p, n in seen[:6]} == {i: 8 for i in ids}
    assert {entry_of[tuple(p)]: n for p, n in seen[6:]} == {i: max_tokens for i, (_, max_tokens) in requests.items()}
    result = json.loads(out.read_text())["t"]["categories"]["irrelevance"]
    assert result["accuracy"] == 0.5 and result["regenerated"] == 6 and result["truncated"] == 3
    assert [(v["valid"], v["truncated"]) for v in result["verdicts"]] == [(False, False), (True, True)] * 3
    assert "irrelevance 6 / 3" in capsys.readouterr().out


def test_a_batch_with_a_budget_per_prompt_gives_each_prompt_what_it_gets_alone():
    """complete with a budget per prompt generates a batch to its largest and cuts each completion at its own: each gets
    the text and cut flag eval.complete gives it alone at its own max_new_tokens (one cut at 3 tokens though the
    batch ran on; two that end within 40)."""
    model, tokenizer = load("tiny")
    model.eval()
    prompts = [tokenizer(bfcl.prompt_text(e), add_special_tokens=False)["input_ids"]
               for e in bfcl.entries("irrelevance", 3, with_hint=True)]
    budgets = [3, 40, 40]
    alone = [evaluation.complete(model, tokenizer, [p], 1, b, "fp32")[0] for p, b in zip(prompts, budgets)]
    assert [cut for _, cut in alone] == [True, False, False]
    assert evaluation.complete(model, tokenizer, prompts, 3, budgets, "fp32") == alone


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
    bad.write_text('{"id": "simple_python_0", "completion": "x", "truncated": "yes"}\n')
    assert evaluation.main(["--bfcl", "simple_python", "--completions", str(bad)]) == 2
    assert f"{bad}: line 1" in capsys.readouterr().err


def test_completions_made_elsewhere_keep_their_truncated_mark(tmp_path):
    """A --completions line marked "truncated": true (its producer's token budget cut it) is counted as cut; none is
    generated again (no model)."""
    lines = [{"id": "irrelevance_0", "completion": "<think>\nThe user", "truncated": True},
             {"id": "irrelevance_1", "completion": "No function fits."}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "c.json"
    assert evaluation.main(["--bfcl", "irrelevance", "--completions", str(path), "--limit", "2", "--name", "c",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())["c"]["categories"]["irrelevance"]
    assert (result["truncated"], result["regenerated"], result["accuracy"]) == (1, 0, 1.0)
    assert [v["truncated"] for v in result["verdicts"]] == [True, False]
