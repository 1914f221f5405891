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


def test_two_ranks_take_the_episode_step_of_one_process(tmp_path):
    """grpo.py --episodes (with --step-credit): each rank runs the G episodes of its share of the tasks; the same
    episodes (rewards, turns, completion lengths) and the same update as one process."""
    lr = 1e-4
    common = ["grpo.py", "--model", "tiny", "--episodes", "8", "--steps", "1", "--group-size", "2",
              "--max-new-tokens", "12", "--turn-limit", "3", "--lr", str(lr), "--warmup", "1", "--keep-zero-variance",
              "--w-episode-format", "1", "--seed", "3", "--step-credit", "1"]
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "one")], 1, 0)
    run(common + ["--prompts-per-step", "4", "--out", str(tmp_path / "two")], 2, 29636)
    run(common + ["--prompts-per-step", "2", "--out", str(tmp_path / "half")], 1, 0)
    check(tmp_path / "one", tmp_path / "two", tmp_path / "half", lr)
    r1, r2 = last_record(tmp_path / "one"), last_record(tmp_path / "two")
    assert r2["reward"] == r1["reward"] and r2["agent_turns"] == r1["agent_turns"]
    assert r2["completion_len"] == pytest.approx(r1["completion_len"], rel=1e-12)


AS_ON_A_GPU = """
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
# A GPU machine, played by gloo: torch.cuda reports a device, and the backend string the code asks for is served
# as on a GPU, nccl's share by gloo. A bare "nccl" serves only cuda tensors ({{'cuda': 'nccl'}}), so it becomes
# "cuda:gloo" and a collective on a CPU tensor fails exactly as it does under NCCL.
real_init = dist.init_process_group
def init_as_on_a_gpu(backend=None, **kwargs):
    real_init("cuda:gloo" if backend == "nccl" else backend.replace("nccl", "gloo"), **kwargs)
dist.init_process_group = init_as_on_a_gpu
torch.cuda.is_available = lambda: True
torch.cuda.set_device = lambda device: None
import parallel
parallel.start()
result = {{"sum": parallel.all_sum(parallel.rank() + 1.5), "any": parallel.any_rank(parallel.rank() == 1),
          "gathered": parallel.gather([parallel.rank()])}}
parallel.barrier()
if parallel.is_main():
    open({out!r}, "w").write(json.dumps(result))
parallel.stop()
"""


def test_every_collective_runs_on_a_backend_map_that_serves_only_the_gpu_for_nccl(tmp_path):
    """Under init_process_group("nccl") a CPU tensor has no backend: the run's bookkeeping collectives (all_sum,
    any_rank, gather, barrier) must run on a map that covers the CPU as well."""
    script = tmp_path / "as_on_a_gpu.py"
    script.write_text(AS_ON_A_GPU.format(root=str(ROOT), out=str(tmp_path / "result.json")))
    run([str(script)], 2, 29633)
    assert json.loads((tmp_path / "result.json").read_text()) == {"sum": 1.5 + 2.5, "any": True, "gathered": [0, 1]}


SCRIPTED_REWARDS = """
import sys, zlib
sys.path.insert(0, {root!r})
import grpo
real_score = grpo.score_rollout
def scripted(tokenizer, gen, samples, group_size, *args):
    # a group is informative (rewards 1, 0) when its sample's crc32 is divisible by 3, else all its rewards are 0.5
    scored = real_score(tokenizer, gen, samples, group_size, *args)
    for i, r in enumerate(scored):
        s = samples[i // group_size]
        useful = zlib.crc32(f"{{s.conversation_id}}/{{len(s.messages)}}".encode()) % 3 == 0
        r.reward.total = float(i % group_size == 0) if useful else 0.5
    return scored
grpo.score_rollout = scripted
sys.exit(grpo.main(sys.argv[1:]))
"""


def drawn_groups(out: Path) -> list[tuple[str, int, bool]]:
    """The step's groups in the rollout log's order (the draw's): which sample, and whether it was trained on."""
    groups = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    return [(g["conversation_id"], g["turn"], g["trained"]) for g in groups]


def test_refill_on_two_ranks_trains_on_the_groups_one_process_trains_on(tmp_path, data):
    """--refill draws B prompts at a time until B groups of the *global* batch are informative and keeps the first
    B in the draw's order, as one process does (a rank counting only its own groups refills, and keeps, others)."""
    lr = 1e-4
    script = tmp_path / "scripted.py"
    script.write_text(SCRIPTED_REWARDS.format(root=str(ROOT)))
    common = [str(script), "--model", "tiny-random", "--data", data, "--steps", "1", "--group-size", "2",
              "--prompts-per-step", "4", "--max-new-tokens", "6", "--lr", str(lr), "--warmup", "1", "--refill",
              "--log-rollouts", "1", "--seed", "8"]
    run(common + ["--out", str(tmp_path / "one")], 1, 0)
    run(common + ["--out", str(tmp_path / "two")], 2, 29634)
    assert last_record(tmp_path / "two")["prompts_drawn"] == last_record(tmp_path / "one")["prompts_drawn"]
    assert largest_difference(tmp_path / "one", tmp_path / "two") < 0.1 * lr
    one = drawn_groups(tmp_path / "one")
    assert len(one) > 4 and any(trained for *_, trained in one)     # it refilled, and trained on something
    assert drawn_groups(tmp_path / "two") == one
