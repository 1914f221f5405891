"""experiment.py: configurations by hand, and a two-configuration run that resumes without training again."""

import json

import pytest

import experiment
from cli import BadInput


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
