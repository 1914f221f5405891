"""What GRPO lets a person see: the rollout log and its viewer, the per-step diagnostics, refill (DAPO)."""

import json

import pytest
import torch

import grpo
import rollouts
from grpo import decision_confusion, separated_by
from rewards import COMPONENTS, Reward
from toolcalls import Parsed


def scored(total, did_call, ref_call, terms=None, well_formed=True):
    calls = [{"name": "f", "arguments": {}}] if did_call else []
    parsed = Parsed(tool_calls=calls, errors=[] if well_formed else ["invalid JSON in tool call"])
    return grpo.Score("", parsed, Reward(0.0, 0.0, None, None, 0.0, total), terms or {c: 0.0 for c in COMPONENTS},
                      False, 1, ref_call)


def test_decision_confusion_counts_each_cell():
    rows = [scored(0, True, True), scored(0, True, False), scored(0, False, True), scored(0, True, True)]
    assert decision_confusion(rows) == {"call|call": 0.5, "call|answer": 0.25, "answer|call": 0.25,
                                        "answer|answer": 0.0}


def test_separated_by_names_the_component_that_varies_most():
    def terms(**kw):
        return {c: kw.get(c, 0.0) for c in COMPONENTS}
    g = 2
    rows = [  # group 1: format terms 0 / 0.1 and decision terms 0.2 / 0 -> decision varies more
        scored(0.2, True, True, terms(decision=0.2)), scored(0.1, True, True, terms(format=0.1)),
        # group 2: only efficiency differs
        scored(0.3, True, True, terms(efficiency=0.1, decision=0.2)), scored(0.2, True, True, terms(decision=0.2)),
        # group 3: all equal: not informative, not counted
        scored(0.5, True, True), scored(0.5, True, True)]
    assert separated_by(rows, g) == {"decision": 0.5, "efficiency": 0.5}
    assert separated_by(rows[4:], g) == {}


def small_data(tmp_path, demo_dir, n=6):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:n]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return str(tmp_path / "d.json")


def test_rollout_log_records_every_group_and_the_viewer_shows_them(tmp_path, demo_dir, capsys):
    out = tmp_path / "g"
    assert grpo.main(["--model", "tiny", "--data", small_data(tmp_path, demo_dir), "--out", str(out), "--steps", "3",
                      "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "24",
                      "--log-rollouts", "2"]) == 0
    groups = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [g["step"] for g in groups] == [1, 1, 3, 3]                     # steps 1, N + 1
    log = {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    for step in (1, 3):
        completions = [c for g in groups if g["step"] == step for c in g["completions"]]
        assert len(completions) == 8
        # the advantages are the group formula applied to the logged totals
        for g in (g for g in groups if g["step"] == step):
            totals = torch.tensor([c["total"] for c in g["completions"]])
            mean, std = totals.mean(), totals.std(unbiased=False)
            want = (totals - mean) / (std + 1e-4) if std > 1e-8 else torch.zeros(4)
            assert torch.allclose(torch.tensor([c["advantage"] for c in g["completions"]]), want, atol=1e-4)
        # the step's diagnostics count the same completions
        ref_call = {id(c): g["reference"]["tool_calls"] != [] for g in groups if g["step"] == step
                    for c in g["completions"]}
        did = [(bool(c["tool_calls"]), ref_call[id(c)]) for c in completions]
        assert log[step]["decision"]["call|call"] == sum(a and b for a, b in did) / 8
        assert log[step]["decision"]["answer|call"] == sum(not a and b for a, b in did) / 8
        assert log[step]["parse_failure"] == sum(bool(c["errors"]) for c in completions) / 8
        assert log[step]["reward"]["total"] == pytest.approx(sum(c["total"] for c in completions) / 8, abs=1e-6)
    assert rollouts.main([str(out), "--step", "3"]) == 0
    shown = capsys.readouterr().out
    for g in (g for g in groups if g["step"] == 3):
        assert g["conversation_id"] in shown and rollouts.show_action(g["reference"]["tool_calls"],
                                                                      g["reference"]["answer"]) in shown
    assert rollouts.main([str(out), "--worst", "1"]) == 0
    worst = min(c["total"] for g in groups if g["step"] == 3 for c in g["completions"])
    assert f"{worst:>6.3f}" in capsys.readouterr().out
    assert rollouts.main([str(out), "--step", "2"]) == 2                   # not logged: one line, exit 2
    assert "logged steps: 1, 3" in capsys.readouterr().err


def test_refill_draws_until_b_groups_are_informative(tmp_path, demo_dir):
    out, B = tmp_path / "r", 2
    assert grpo.main(["--model", "tiny", "--data", small_data(tmp_path, demo_dir, 12), "--out", str(out),
                      "--steps", "2", "--group-size", "4", "--prompts-per-step", str(B), "--max-new-tokens", "24",
                      "--refill", "--refill-cap", "3", "--log-rollouts", "1"]) == 0
    groups = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:
        mine = [g for g in groups if g["step"] == record["step"]]
        assert len(mine) == record["prompts_drawn"] and record["prompts_drawn"] in (2, 4, 6)
        informative = [len({c["total"] for c in g["completions"]}) > 1 for g in mine]
        # it stops at the first draw that reaches B informative groups, or at the cap (3 x B prompts)
        assert sum(informative) >= B or len(mine) == 3 * B
        assert sum(informative[:-B]) < B
