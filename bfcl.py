"""The Berkeley Function Calling Leaderboard (bfcl-eval==2026.3.23), scored by BFCL's own code, never ours.

    python eval.py --model M --bfcl simple_python,multiple,irrelevance [--limit N] [--out F]
    python eval.py --bfcl simple_python --completions FILE       completions made elsewhere, no model loaded:
                                                                   JSON lines {"id": BFCL entry id, "completion": text}
                                                                   (and "truncated": true where a budget cut it)

What is BFCL's and what is this project's:
  prompts     BFCL's: its loader (`bfcl_eval.utils.load_dataset_entry`: the entry's messages and function docs, with
              the note on Python syntax BFCL adds to each description at generation), written by BFCL's Qwen FC
              handler (`QwenFCHandler._format_prompt`: tools = the raw docs, "type": "dict" kept, no system prompt of
              BFCL's, thinking left to the model), the very text BFCL sends a Qwen model. A Qwen3-format chat template
              (this project's models, Qwen3's own) writes the same text but for non-ASCII characters in the tool
              docs (50 of the 3,491 entries), which its `tojson` writes as themselves and the handler's `json.dumps`
              as \\u escapes; BFCL's text is the one used (tests/test_bfcl.py checks every entry)
  generation  ours: greedy, --max-new-tokens; a completion cut there is generated again with BFCL's own budget
              (`max_tokens`: what BFCL's handler requests, the model's context less the prompt, at most 4,096), so
              that one still cut is one BFCL's own run would cut too, and the rows count both (`Completion`)
  decoding    BFCL's: the text after </think> is the result, as `QwenFCHandler._parse_query_response_prompting` keeps
              it; `QwenFCHandler.decode_ast` (`<tool_call>\\n(.*?)\\n</tool_call>`, json.loads) inside the runners
  verdict     BFCL's: `eval_runner.ast_file_runner` (decode, format check, `ast_checker`) and
              `eval_runner.relevance_file_runner` (irrelevance passes when no call decodes, relevance when one does);
              their accuracy is the number reported, their score file the per-entry verdicts
  summary     BFCL's groups, for the categories run: Non-Live AST = mean of simple_python, multiple, parallel,
              parallel_multiple (BFCL's Simple also averages Java and JavaScript, not run here); Live AST = mean of the
              live AST categories weighted by their entry counts; Irrelevance (irrelevance_overall) = mean of irrelevance,
              live_irrelevance

Only Python categories: the Java and JavaScript ones need BFCL's type conversions of those languages, and the
multi-turn ones execute the model's calls with eval() (BFCL's multi_turn_utils), which this project never does with
model output. Install: pip install -r requirements-bfcl.txt && pip install --no-deps bfcl-eval==2026.3.23 (its
full dependency list pulls every hosted model's SDK and CUDA wheels, 6.3 GB; none of them scores).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from cli import BadInput
from model import CACHE_DIR
from stats import mean_ci

AST_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
                  "live_parallel", "live_parallel_multiple")
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
CATEGORIES = AST_CATEGORIES + RELEVANCE_CATEGORIES
# Named apart from the categories: a row holds both (BFCL's own "Irrelevance" group shares a category's name).
GROUPS = {"non_live_ast": ("simple_python", "multiple", "parallel", "parallel_multiple"),
          "live_ast": ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"),
          "irrelevance_overall": ("irrelevance", "live_irrelevance")}
WEIGHTED_GROUPS = {"live_ast"}   # BFCL weights these by entry count; the others are plain means
# The handler and registry name BFCL gives Qwen3 in FC mode; its scorer reads only `underscore_to_dot` from it.
HANDLER_MODEL, REGISTRY_NAME = "Qwen/Qwen3-8B", "Qwen/Qwen3-8B-FC"
INSTALL = "pip install -r requirements-bfcl.txt && pip install --no-deps bfcl-eval==2026.3.23"
# BFCL's request budget (base_oss_handler.OSSHandler._query_prompting): at most this many new tokens, and 1,000 where
# the prompt leaves no room in the context. There BFCL's server refuses the request and BFCL scores its error message;
# here the model is asked for the 1,000 tokens (the tiny model's 2,048-token context: 174 live entries, no non-live).
MAX_TOKENS_CAP, MAX_TOKENS_OVERFLOW = 4096, 1000


@dataclass
class Completion:
    """A completion and how it ended: `truncated` when the token budget it was generated with cut it (BFCL's own
    budget where generated here), `regenerated` when --max-new-tokens cut it first and it was generated again at
    BFCL's budget. A thought cut before its call decodes to "no call", a pass on irrelevance: the counts say how
    much of a score stands on cut completions."""
    text: str
    truncated: bool = False
    regenerated: bool = False


def bfcl():
    """BFCL's modules (eval_runner, QwenFCHandler, the loaders), imported once. BFCL writes result/score folders
    under $BFCL_PROJECT_ROOT (set to a cache folder here). Its registry of models, `constants.model_config`, imports
    the SDK of every hosted model it supports (17 packages) to build handler classes; the scorer reads one field of
    one entry of it (underscore_to_dot, False for Qwen FC), so that one module is replaced by that one entry."""
    if "bfcl_eval.eval_checker.eval_runner" in sys.modules:
        return sys.modules["bfcl_eval.eval_checker.eval_runner"], sys.modules[
            "bfcl_eval.model_handler.local_inference.qwen_fc"].QwenFCHandler
    if importlib.util.find_spec("bfcl_eval") is None:
        raise BadInput(f"--bfcl needs BFCL's package: {INSTALL}")
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(CACHE_DIR / "bfcl"))
    registry = types.ModuleType("bfcl_eval.constants.model_config")
    registry.MODEL_CONFIG_MAPPING = {REGISTRY_NAME: types.SimpleNamespace(underscore_to_dot=False)}
    sys.modules["bfcl_eval.constants.model_config"] = registry
    try:
        from bfcl_eval.eval_checker import eval_runner
        from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler
    except ImportError as e:
        raise BadInput(f"--bfcl: {e}; {INSTALL}") from None
    return eval_runner, QwenFCHandler


@functools.cache
def handler():
    """BFCL's Qwen FC handler, built once (its decoding and response parsing are used for every entry)."""
    _, QwenFCHandler = bfcl()
    return QwenFCHandler(model_name=HANDLER_MODEL, temperature=0.0, registry_name=REGISTRY_NAME, is_fc_model=True)


def parse_categories(spec: str) -> list[str]:
    names = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise BadInput(f"--bfcl {spec}: unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    return names


def entries(category: str, limit: int | None, with_hint: bool) -> list[dict]:
    """The category's first `limit` entries as BFCL loads them: with its language note for generation, without for
    scoring (as its runner does)."""
    eval_runner, _ = bfcl()
    return eval_runner.load_dataset_entry(category, include_prereq=False,
                                          include_language_specific_hint=with_hint)[:limit]


def prompt_text(entry: dict) -> str:
    """The prompt BFCL sends a Qwen FC model for the entry: its handler's own text (a chat template would write
    non-ASCII tool docs unescaped, the handler as \\u escapes)."""
    return handler()._format_prompt(entry["question"][0], entry["function"])


def context_length(config, tokenizer) -> int:
    """The model's context as BFCL's handler reads it: max_position_embeddings, else the tokenizer's
    model_max_length."""
    return getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length


def max_tokens(prompt_tokens: int, context: int) -> int:
    """The new-token budget BFCL's handler requests for a prompt of this many tokens (OSSHandler._query_prompting):
    the context less the prompt and 2, at most 4,096; 1,000 where the prompt leaves less than 2."""
    if context < prompt_tokens + 2:
        return MAX_TOKENS_OVERFLOW
    return min(MAX_TOKENS_CAP, context - prompt_tokens - 2)


def result_text(completion: str) -> str:
    """What BFCL keeps of a completion as the model's result: the text after </think>, as
    QwenFCHandler._parse_query_response_prompting keeps it (its own method, on the completion alone)."""
    response = types.SimpleNamespace(choices=[types.SimpleNamespace(text=completion)],
                                     usage=types.SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    return handler()._parse_query_response_prompting(response)["model_responses"]


def score_file(score_dir: Path, model_name: str, category: str) -> Path:
    """The file where BFCL's runner writes a category's verdicts, named by BFCL's own helpers: a pattern would also
    match another category whose name ends in this one (live_irrelevance for irrelevance)."""
    from bfcl_eval.utils import get_directory_structure_by_category, get_file_name_by_category
    return (score_dir / model_name / get_directory_structure_by_category(category)
            / get_file_name_by_category(category, is_score_file=True))


def score(category: str, completions: dict[str, Completion], limit: int | None, score_dir: Path) -> dict:
    """BFCL's own runner on one category: its accuracy, and each entry's verdict (from its score file), with how
    many completions were cut (`truncated`) and generated again at BFCL's budget (`regenerated`)."""
    eval_runner, _ = bfcl()
    prompts = entries(category, limit, with_hint=False)
    missing = [e["id"] for e in prompts if e["id"] not in completions]
    if missing:
        raise BadInput(f"--bfcl {category}: no completion for {len(missing)} entries (first: {missing[0]})")
    model_result = [{"id": e["id"], "result": result_text(completions[e["id"]].text)} for e in prompts]
    name = REGISTRY_NAME.replace("/", "_")
    if category in RELEVANCE_CATEGORIES:
        accuracy, total = eval_runner.relevance_file_runner(handler(), model_result, prompts, name, category,
                                                            score_dir)
    else:
        answers = eval_runner.load_ground_truth_entry(category)[:len(prompts)]
        accuracy, total = eval_runner.ast_file_runner(handler(), model_result, prompts, answers, category, name,
                                                      score_dir)
    lines = score_file(score_dir, name, category).read_text().splitlines()[1:]
    failed = {json.loads(line)["id"]: json.loads(line) for line in lines}
    verdicts = [{"id": e["id"], "valid": e["id"] not in failed,
                 **({"error_type": failed[e["id"]].get("error_type")} if e["id"] in failed else {}),
                 "truncated": completions[e["id"]].truncated, "regenerated": completions[e["id"]].regenerated}
                for e in prompts]
    mean, low, high = mean_ci([[float(v["valid"]) for v in verdicts]])
    assert abs(mean - accuracy) < 1e-12, (category, mean, accuracy)   # the verdicts are the runner's own
    return {"accuracy": accuracy, "accuracy_ci": [low, high], "entries": total,
            "truncated": sum(v["truncated"] for v in verdicts), "regenerated": sum(v["regenerated"] for v in verdicts),
            "verdicts": verdicts}


def summary(results: dict[str, dict]) -> dict[str, float]:
    """BFCL's summary groups over the categories that were run (a group only when all its categories were)."""
    out = {}
    for group, members in GROUPS.items():
        if all(c in results for c in members):
            if group in WEIGHTED_GROUPS:
                total = sum(results[c]["entries"] for c in members)
                out[group] = sum(results[c]["accuracy"] * results[c]["entries"] for c in members) / total
            else:
                out[group] = sum(results[c]["accuracy"] for c in members) / len(members)
    return out


def read_completions(path: str) -> dict[str, Completion]:
    """--completions FILE: JSON lines {"id", "completion"[, "truncated": true when the producer's token budget cut
    it]}; a bad line is an error naming the file and line."""
    completions = {}
    for k, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            truncated = record.get("truncated", False)
            if not isinstance(truncated, bool):
                raise TypeError(f"'truncated' is {truncated!r}, not true or false")
            completions[str(record["id"])] = Completion(str(record["completion"]), truncated)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise BadInput(f"{path}: line {k}: not a JSON object with 'id' and 'completion' ({e})") from None
    return completions
