"""torchrun data parallelism (parallel.py): two gloo processes take one SFT step and one GRPO step and end where
one process ends on the same global batch.

The tolerance, derived: the two runs differ only in the order of float sums (each rank sums its share, then the
all-reduce adds the shares), which moves a gradient by ~1e-7 of the size of the terms it sums. AdamW's first update
is lr * g / (|g| + eps) per element, so an element whose terms cancel to |g| ~ eps (1e-8) can move by up to a few
percent of lr; every other element by far less. A sharding mistake (a rank's gradient left out, a normaliser of
the local batch) changes the update by ~lr on most elements and the logged loss and gradient norm by a factor.
So: weights within 0.1 lr, loss and gradient norm within 1e-5 relative (the GRPO loss, ~0 by construction, within
1e-6); and the check is shown to catch one process
trained on only half the batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], processes: int, port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-port", str(port)] if processes > 1 else [sys.executable]
    done = subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def last_record(out: Path) -> dict:
    return json.loads((out / "log.jsonl").read_text().splitlines()[-1])


def largest_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def check(one: Path, two: Path, half: Path, lr: float) -> None:
    assert largest_difference(one, two) < 0.1 * lr
    r1, r2 = last_record(one), last_record(two)
    assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-5)
    # GRPO's loss at ratio 1 is sum A * (-1) over tokens / N ~ 0 (advantages centred): rounding, not a factor
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5, abs=1e-6)
    assert largest_difference(one, half) > 0.5 * lr          # the check can fail: half the batch is not the batch


@pytest.fixture
def data(tmp_path, demo_dir):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:8]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return str(tmp_path / "d.json")


def test_two_ranks_take_the_sft_step_of_one_process(tmp_path, data):
    lr = 1e-3
    common = ["sft.py", "--mode", "base", "--model", "tiny-random", "--data", data, "--max-steps", "1", "--lr",
              str(lr), "--warmup", "0", "--batch-size", "2", "--seed", "0"]
    run(common + ["--grad-accum", "2", "--out", str(tmp_path / "one")], 1, 0)
    run(common + ["--grad-accum", "2", "--out", str(tmp_path / "two")], 2, 29631)
    run(common + ["--grad-accum", "1", "--out", str(tmp_path / "half")], 1, 0)
    check(tmp_path / "one", tmp_path / "two", tmp_path / "half", lr)


def test_two_ranks_take_the_grpo_step_of_one_process(tmp_path, data):
    lr = 1e-4
    common = ["grpo.py", "--model", "tiny-random", "--data", data, "--steps", "1", "--group-size", "4",
              "--max-new-tokens", "12", "--lr", str(lr), "--warmup", "1", "--keep-zero-variance", "--seed", "3"]
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "one")], 1, 0)
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "two")], 2, 29632)
    run(common + ["--prompts-per-step", "2", "--out", str(tmp_path / "half")], 1, 0)
    check(tmp_path / "one", tmp_path / "two", tmp_path / "half", lr)
    # the two ranks sampled what one process sampled: the same rewards and completion lengths
    r1, r2 = last_record(tmp_path / "one"), last_record(tmp_path / "two")
    assert r2["reward"] == r1["reward"] and r2["completion_len"] == r1["completion_len"]
