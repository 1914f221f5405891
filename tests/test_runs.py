"""A run's life under preemption: checkpoints that survive a kill at any moment, SIGTERM then --resume."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import runs
import sft
from model import load

ROOT = Path(__file__).resolve().parent.parent


def tiny_training_state():
    model, tok = load("tiny-random")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, runs.warmup_cosine(2, 10))
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    return model, tok, opt, sched


def loads(ckpt: Path) -> int:
    model, _, opt, sched = tiny_training_state()
    return runs.load_checkpoint(ckpt, model, opt, sched)["step"]


class Interrupted(BaseException):
    pass


def test_a_kill_at_any_filesystem_step_of_a_save_leaves_a_checkpoint(tmp_path, monkeypatch):
    """Interrupt the save of step 2 at its 1st, 2nd, ... rename / link / removal: the checkpoint must always load,
    as step 1 (before the swap) or step 2 (after)."""
    model, tok, opt, sched = tiny_training_state()
    ckpt = tmp_path / "checkpoint"
    runs.save_checkpoint(ckpt, model, tok, opt, sched, {"step": 1}, base_model="tiny-random")
    real = {"replace": os.replace, "symlink": os.symlink, "rmtree": shutil.rmtree}
    seen = []
    for n in range(1, 20):
        calls = {"n": 0}

        def interrupting(name):
            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == n:
                    raise Interrupted(name)
                return real[name](*args, **kwargs)
            return call
        monkeypatch.setattr(os, "replace", interrupting("replace"))
        monkeypatch.setattr(os, "symlink", interrupting("symlink"))
        monkeypatch.setattr(shutil, "rmtree", interrupting("rmtree"))
        try:
            runs.save_checkpoint(ckpt, model, tok, opt, sched, {"step": 2}, base_model="tiny-random")
            interrupted = False
        except Interrupted:
            interrupted = True
        monkeypatch.undo()
        seen.append(loads(ckpt))
        if not interrupted:
            break
        runs.save_checkpoint(ckpt, model, tok, opt, sched, {"step": 1}, base_model="tiny-random")   # start over
    assert set(seen) <= {1, 2} and seen[-1] == 2 and len(seen) > 2   # every step of the save was interrupted once


KILLED_SAVER = """
import sys
sys.path.insert(0, {root!r})
from tests.test_runs import tiny_training_state
import runs
model, tok, opt, sched = tiny_training_state()
step = 0
while True:
    step += 1
    runs.save_checkpoint({ckpt!r}, model, tok, opt, sched, {{"step": step}}, base_model="tiny-random")
    print(step, flush=True)
"""


def test_sigkill_during_repeated_saves_leaves_a_checkpoint_that_loads(tmp_path):
    ckpt = tmp_path / "checkpoint"
    rng = random.Random(0)
    for trial in range(3):
        child = subprocess.Popen([sys.executable, "-c", KILLED_SAVER.format(root=str(ROOT), ckpt=str(ckpt))],
                                 stdout=subprocess.PIPE, text=True)
        child.stdout.readline()                       # one save done: saving is under way
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()
        child.wait()
        assert loads(ckpt) >= 1


def test_sigterm_checkpoints_and_resume_equals_an_uninterrupted_run(tmp_path, demo_dir):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(json.loads((demo_dir / "retail_train.json").read_text())[:12]))
    common = ["--mode", "base", "--model", "tiny-random", "--data", str(data), "--max-steps", "120",
              "--batch-size", "2", "--save-every", "1000", "--lr", "1e-3"]
    cut = tmp_path / "cut"
    child = subprocess.Popen([sys.executable, str(ROOT / "sft.py"), *common, "--out", str(cut)],
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    log = cut / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert f"--resume {cut}" in err and "SIGTERM after step" in err
    stopped_at = json.loads((cut / "checkpoint" / "state.json").read_text())["step"]
    assert 3 <= stopped_at < 120 and not (cut / "model.safetensors").exists()
    torch.set_num_threads(2)
    handler = signal.getsignal(signal.SIGTERM)
    assert sft.main(["--resume", str(cut)]) == 0
    assert signal.getsignal(signal.SIGTERM) is handler      # the run gives the handlers back
    assert sft.main(common + ["--out", str(tmp_path / "full")]) == 0
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()] == list(range(1, 121))


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "args.json").write_text(json.dumps(vars(sft.parse_args(["--model", "tiny-random", "--out", str(out)]))))
    assert sft.main(["--resume", str(out)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_a_sharded_checkpoint_loads_every_shard_and_a_missing_weight_is_an_error(tmp_path):
    """Full fine-tuning of a real model saves shards (model-0000k-of-0000n.safetensors + index); resume loads them
    all, and a weight that is in none of them stops the resume instead of staying at its initial value."""
    from safetensors.torch import load_file, save_file

    from cli import BadInput
    model, tok, opt, sched = tiny_training_state()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ckpt = tmp_path / "checkpoint"
    runs.save_checkpoint(ckpt, model, tok, opt, sched, {"step": 1}, base_model="tiny-random")
    real = ckpt.resolve()
    (real / "model.safetensors").unlink()
    model.save_pretrained(str(real), max_shard_size="1MB")
    shards = sorted(real.glob("model-*.safetensors"))
    assert len(shards) > 1 and (real / "model.safetensors.index.json").exists()
    fresh, _, fresh_opt, fresh_sched = tiny_training_state()
    assert runs.load_checkpoint(ckpt, fresh, fresh_opt, fresh_sched)["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    part = load_file(str(shards[-1]))
    dropped = sorted(part)[0]
    save_file({k: v for k, v in part.items() if k != dropped}, str(shards[-1]))
    fresh, _, fresh_opt, fresh_sched = tiny_training_state()
    with pytest.raises(BadInput, match=dropped.replace(".", r"\.")):
        runs.load_checkpoint(ckpt, fresh, fresh_opt, fresh_sched)
