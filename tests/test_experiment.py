"""experiment.py: configurations by hand, and a two-configuration run that resumes without training again."""

import json

import pytest

import experiment
from cli import BadInput
from data import load_turn_samples


def test_configurations_and_grid_by_hand():
    assert experiment.config_flags("no-tool") == ("no-tool", ["--reward", "no-tool"])
    assert experiment.config_flags("refill") == ("refill", ["--refill"])
    assert experiment.config_flags("hot=--temperature 1.2") == ("hot", ["--temperature", "1.2"])
    with pytest.raises(BadInput):
        experiment.config_flags("sparse")
    assert experiment.grid_configs([]) == []
    assert experiment.grid_configs(["w-tool=0.3,0.9", "w-efficiency=0"]) == [
        ("w-tool=0.3,w-efficiency=0", ["--w-tool", "0.3", "--w-efficiency", "0"]),
        ("w-tool=0.9,w-efficiency=0", ["--w-tool", "0.9", "--w-efficiency", "0"])]


def test_experiment_table_and_resume(tmp_path, demo_dir, capsys):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:4]
    (tmp_path / "d.json").write_text(json.dumps(records))
    out = tmp_path / "x"
    argv = ["--model", "tiny-random", "--data", str(tmp_path / "d.json"), "--eval-data",
            str(demo_dir / "retail_test.json"), "--limit", "6", "--out", str(out), "--seeds", "0",
            "--configs", "paper", "binary", "--compare", "same=tiny-random", "--", "--steps", "1", "--group-size", "2", "--prompts-per-step", "2",
            "--max-new-tokens", "8"]
    assert experiment.main(argv) == 0
    table = json.loads((out / "table.json").read_text())["rows"]
    assert set(table) == {"start", "same", "paper", "binary"}
    assert table["same"]["turn_success"] == table["start"]["turn_success"]   # the start model, evaluated again
    evals = {name: json.loads((out / name / "seed0" / "eval.json").read_text()) for name in ("paper", "binary")}
    for name, result in evals.items():
        assert len(result["turn_success"]) == 6
        assert table[name]["turn_success"][0] == pytest.approx(sum(result["turn_success"]) / 6)
        assert json.loads((out / name / "seed0" / "args.json").read_text())["reward"] == name
    diff = table["binary"]["turn_success_minus_baseline"][0]
    assert diff == pytest.approx((sum(evals["binary"]["turn_success"]) - sum(evals["paper"]["turn_success"])) / 6)
    model = out / "paper" / "seed0" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    capsys.readouterr()
    assert experiment.main(argv) == 0                       # resumed: nothing trains again
    assert "python grpo.py" not in capsys.readouterr().out and model.stat().st_mtime_ns == stamp
    # the same --out with another GRPO flag: its runs were trained by another command, refused rather than reused
    assert experiment.main(argv[:-1] + ["9"]) == 2
    assert "trained by `python grpo.py" in capsys.readouterr().err and model.stat().st_mtime_ns == stamp


def fake_training(monkeypatch):
    """experiment.train as a run that saved the seeded tiny-random model, and completions of up to 8 tokens: the
    evaluations' cache without GRPO's time."""
    from model import load, save

    def train(run_dir, args, flags, seed):
        if not (run_dir / "model.safetensors").exists():
            save(*load("tiny-random"), run_dir)
    monkeypatch.setattr(experiment, "train", train)
    monkeypatch.setattr(experiment, "scale_settings", lambda model_dir: {"batch_size": 64, "max_new_tokens": 8})


def test_an_evaluation_made_without_episodes_is_not_reused_with_them(tmp_path, demo_dir, monkeypatch, capsys):
    fake_training(monkeypatch)
    out = tmp_path / "x"
    argv = ["--model", "tiny-random", "--eval-data", str(demo_dir / "retail_test.json"), "--limit", "2",
            "--out", str(out), "--seeds", "0", "--configs", "paper"]
    assert experiment.main(argv) == 0
    assert experiment.main(argv + ["--episodes", "2", "--trials", "1"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows["start"]["seeds"] == 1 and len(rows["start"]["episode"]) == 3   # mean and its 95% interval
    assert "start.json: made with episodes 0, this command episodes 2; evaluating it again" in capsys.readouterr().err


def test_an_evaluation_of_other_turns_is_made_again_and_the_same_one_reused(tmp_path, demo_dir, monkeypatch,
                                                                            capsys):
    fake_training(monkeypatch)
    common = ["--model", "tiny-random", "--eval-data", str(demo_dir / "retail_test.json"), "--seeds", "0",
              "--configs", "paper"]
    assert experiment.main(common + ["--limit", "4", "--out", str(tmp_path / "fresh")]) == 0   # never cached
    fresh = json.loads((tmp_path / "fresh" / "table.json").read_text())["rows"]
    out = tmp_path / "x"
    assert experiment.main(common + ["--limit", "2", "--out", str(out)]) == 0
    assert experiment.main(common + ["--limit", "4", "--out", str(out)]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    for name in ("start", "paper"):
        assert len(json.loads((out / ("start.json" if name == "start" else "paper/seed0/eval.json")).read_text())
                   ["turn_success"]) == 4
        assert rows[name]["turn_success"] == fresh[name]["turn_success"]
    assert "eval.json: made with limit 2, this command limit 4; evaluating it again" in capsys.readouterr().err
    stamp = (out / "start.json").stat().st_mtime_ns
    assert experiment.main(common + ["--limit", "4", "--out", str(out)]) == 0   # the same settings: reused
    assert (out / "start.json").stat().st_mtime_ns == stamp and "again" not in capsys.readouterr().err


def test_the_validation_split_is_evaluated_beside_the_held_out_one_and_leaves_it_as_it_was(tmp_path, demo_dir,
                                                                                          monkeypatch):
    fake_training(monkeypatch)
    import data
    monkeypatch.setattr(data, "DEMO_DIR", demo_dir)   # demo:test and demo:val read the session's demo files
    out = tmp_path / "x"
    common = ["--model", "tiny-random", "--limit", "2", "--out", str(out), "--seeds", "0", "--configs", "paper",
              "--episodes", "2", "--trials", "1"]
    assert experiment.main(common) == 0
    held_out = {f: (out / f).read_bytes() for f in ("start.json", "paper/seed0/eval.json", "table.json")}
    assert experiment.main(common + ["--split", "val"]) == 0
    assert {f: (out / f).read_bytes() for f in held_out} == held_out
    val = json.loads((out / "paper" / "seed0" / "eval_val.json").read_text())
    assert val["made_with"]["eval_data"] == "demo:val" and val["made_with"]["episode_split"] == "val"
    assert json.loads((out / "paper" / "seed0" / "eval.json").read_text())["made_with"]["eval_data"] == "demo:test"
    assert set(json.loads((out / "table_val.json").read_text())["rows"]) == {"start", "paper"}


def test_training_summary_by_hand(tmp_path):
    """12 episode steps: half of the groups informative at odd steps, all at even ones (mean 0.75); 100 new tokens a
    step (1,200); task success 0, 0.1, ..., 1.1 -> first 10 steps 0.45, last 10 (steps 3-12) 0.65; an evaluation line
    without training fields is not a step."""
    from experiment import training_summary
    lines = [{"step": k + 1, "zero_variance_groups": 0.5 if k % 2 == 0 else 0.0, "new_tokens": 100,
              "task_success": k / 10, "reward": {"total": 9.0}} for k in range(12)]
    lines.insert(5, {"step": 5, "eval": {"turn_success": 0.5}})
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    got = training_summary(tmp_path)
    assert got == pytest.approx({"informative": 0.75, "sampled_tokens": 1200, "train_first10": 0.45,
                                 "train_last10": 0.65})


def test_cold_start_configurations_a_thinking_override_and_the_start_as_baseline(tmp_path, demo_dir):
    """--stage cold-start trains with sft.py --mode cold-start (a configuration's --data replacing the shared one);
    MODEL@on evaluates a model with thinking on where it was trained without; --baseline start takes the differences
    against the start model."""
    from eval import evaluate_turns
    from model import load
    out = tmp_path / "x"
    argv = ["--stage", "cold-start", "--model", "tiny-random", "--data", str(demo_dir / "retail_train.json"),
            "--eval-data", str(demo_dir / "retail_test.json"), "--limit", "3", "--max-new-tokens", "16",
            "--out", str(out), "--seeds", "0", "--baseline", "start", "--compare", "on=tiny-random@on",
            "--configs", f"cold=--data {demo_dir / 'retail_cold_start.json'}",
            "--", "--replay-ratio", "0", "--max-steps", "1", "--batch-size", "2"]
    assert experiment.main(argv) == 0
    run = json.loads((out / "cold" / "seed0" / "args.json").read_text())
    assert run["mode"] == "cold-start" and run["data"].endswith("retail_cold_start.json") and run["max_steps"] == 1
    assert json.loads((out / "on.json").read_text())["made_with"]["thinking"] is True
    assert json.loads((out / "on.json").read_text())["made_with"]["max_new_tokens"] == 16
    assert "thinking" not in json.loads((out / "start.json").read_text())["made_with"]   # its own mode: off
    samples = load_turn_samples(demo_dir / "retail_test.json")[0][:3]
    model, tokenizer = load("tiny-random")
    by_hand = [float(t.success) for t in evaluate_turns(model, tokenizer, samples, True, batch_size=64,
                                                        max_new_tokens=16)]
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows["on"]["turn_success"][0] == pytest.approx(sum(by_hand) / 3)
    assert rows["cold"]["turn_success_minus_baseline"][0] == pytest.approx(
        rows["cold"]["turn_success"][0] - rows["start"]["turn_success"][0])
    assert "turn_success_minus_baseline" not in rows["start"]
    baseline = argv.index("--baseline") + 1
    assert experiment.main(argv[:baseline] + ["nobody"] + argv[baseline + 1:]) == 2
