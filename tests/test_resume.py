"""Reliability: a killed or preempted run resumes mid-epoch exactly (both backends), checkpoints
survive storage faults, run folders refuse mixing runs, and a failed DDP rank stops the others."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import rawdata
import torch
from conftest import ROOT

from fastmlic import train
from fastmlic.data.dali_loader import dali_available
from fastmlic.preemption import INTERRUPTED, PREEMPTED
from fastmlic.run import RunFolderError

STEPS_PER_EPOCH = 8  # 256 training images, batches of 32
ARGS = [
    "--cfg", "digits",
    "--data.image_size=32", "--data.batch_size=32", "--data.workers=0",
    "--data.randaugment_n=1", "--data.cutout=0.25",  # random draws of the loader that must be replayed
    "--model.backbone=resnet10t", "--train.epochs=3", "--train.log_every=1", "--optim.lr=2e-3",
]  # fmt: skip
BACKENDS = [
    "torch",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI is not installed")),
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("resume"), 256, 64, 32)


def args(shards, out, name, backend, *extra):
    return [*ARGS, f"--data.shards={shards}", f"--train.out_dir={out}", f"--train.name={name}",
            f"--data.backend={backend}", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """One run per backend that nothing interrupts, without mid-epoch checkpoints: the reference."""
    out, done = tmp_path_factory.mktemp("whole"), {}

    def get(backend):
        if backend not in done:
            train.main(args(shards, out, backend, backend))
            done[backend] = out / backend
        return done[backend]

    return get


def rows(run, kind):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]  # fmt: skip


def step_losses(run):
    return [(r["step"], r["loss"]) for r in rows(run, "train")]


def assert_same_run(run, reference):
    assert step_losses(run) == step_losses(reference)  # each step once, with the same loss
    timing = ("seconds", "images_per_s", "images_per_s_per_device", "data_wait", "peak_memory_mb")
    ours, theirs = ([{k: v for k, v in r.items() if k not in timing} for r in rows(x, "epoch")]
                    for x in (run, reference))  # fmt: skip
    assert ours == theirs
    ours, theirs = (torch.load(x / "last.pt", weights_only=False) for x in (run, reference))
    for name, value in theirs["model"].items():
        assert torch.equal(ours["model"][name], value), name
    for name, value in theirs["ema"].items():
        assert torch.equal(ours["ema"][name], value), name


def start(command, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same kernels as in-process
    return subprocess.Popen([sys.executable, str(ROOT / "fastmlic" / "train.py"), *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def wait_for_step(proc, run, step, timeout=300):
    """Until metrics.jsonl shows `step` (the step after it may be running already)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        if any(json.loads(x).get("step", 0) >= step for x in lines):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_mid_epoch_then_resume_repeats_the_uninterrupted_run(shards, tmp_path, uninterrupted, backend):
    step = random.randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH - 1)  # somewhere in epoch 2
    print(f"killing at step {step}")
    run = tmp_path / "killed"
    proc = start(args(shards, tmp_path, "killed", backend, "--train.checkpoint_every_steps=3"))
    wait_for_step(proc, run, step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert saved and len(saved) <= 2, saved  # keep_checkpoints=2
    train.main(["--resume", str(run)])
    assert_same_run(run, uninterrupted(backend))
    assert "resumed" in (run / "log.txt").read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_saves_mid_epoch_exits_preempted_and_resume_continues(
    shards, tmp_path, uninterrupted, backend
):
    run = tmp_path / "term"
    proc = start(args(shards, tmp_path, "term", backend))  # no periodic checkpoints: the signal makes one
    wait_for_step(proc, run, STEPS_PER_EPOCH + 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED, err
    assert f"--resume {run}" in out and "preempted by SIGTERM" in out
    newest = torch.load(sorted((run / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert newest["state"]["epoch"] == 1 and 0 < newest["state"]["batches"] < STEPS_PER_EPOCH
    assert "preempted by SIGTERM" in (run / "log.txt").read_text()
    train.main(["--resume", str(run)])
    assert_same_run(run, uninterrupted(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_saves_mid_epoch_without_a_traceback_and_resume_continues(
    shards, tmp_path, uninterrupted, backend
):
    # Ctrl-C signals the whole foreground process group, loader workers included (2 of them here)
    run = tmp_path / "int"
    proc = start(args(shards, tmp_path, "int", backend, "--data.workers=2"), start_new_session=True)
    wait_for_step(proc, run, STEPS_PER_EPOCH + 2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"--resume {run}" in out and "preempted by SIGINT" in out
    newest = torch.load(sorted((run / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert newest["state"]["epoch"] == 1 and 0 < newest["state"]["batches"] < STEPS_PER_EPOCH
    train.main(["--resume", str(run), "--data.workers=0"])  # the same run at any worker count
    assert_same_run(run, uninterrupted(backend))


def test_a_truncated_newest_checkpoint_is_named_and_resume_falls_back(
    shards, tmp_path, uninterrupted, capsys
):
    train.main(args(shards, tmp_path, "t", "torch", "--train.checkpoint_every_steps=3",
                    "--train.stop_after=1", "--train.keep_checkpoints=3"))  # fmt: skip
    run = tmp_path / "t"
    states = sorted((run / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in states] == ["step-00000003.pt", "step-00000006.pt", "step-00000008.pt"]
    newest = states[-1]  # also last.pt: the same file under two names
    assert os.path.samefile(newest, run / "last.pt")
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    capsys.readouterr()
    train.main(["--resume", str(run), "--train.stop_after=0"])
    out = capsys.readouterr().out
    assert f"skipped an unreadable checkpoint: {newest}" in out and "from step-00000006.pt" in out
    assert_same_run(run, uninterrupted("torch"))


def test_a_full_disk_is_an_error_naming_the_file_and_the_previous_checkpoint_stays(
    shards, tmp_path, monkeypatch
):
    train.main(args(shards, tmp_path, "d", "torch", "--train.epochs=2", "--train.stop_after=1"))
    run = tmp_path / "d"
    before = (run / "last.pt").read_bytes()
    real_fsync = os.fsync

    def disk_full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".step-"):  # a checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunFolderError, match=r"cannot write .*checkpoints/step-00000016.pt: No space left "
                                             r"on device \(\d+ MB free"):  # fmt: skip
        train.main(["--resume", str(run), "--train.stop_after=0"])
    assert (run / "last.pt").read_bytes() == before
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    assert "No space left on device" in (run / "log.txt").read_text()


def test_a_run_killed_in_its_first_save_is_cleaned_and_says_how_to_start_again(shards, tmp_path):
    train.main(args(shards, tmp_path, "k", "torch", "--train.epochs=1"))
    run = tmp_path / "k"
    for state in [run / "last.pt", *(run / "checkpoints").glob("*.pt")]:  # as kill -9 in the first save
        state.unlink()
    (run / "checkpoints" / ".step-00000008.pt.tmp4242").write_bytes(b"half a checkpoint")
    with pytest.raises(FileNotFoundError) as stopped:
        train.main(["--resume", str(run)])
    message = str(stopped.value)
    assert "nothing to resume" in message and "removed .step-00000008.pt.tmp4242" in message
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    again = message.split("start it again with python fastmlic/train.py ")[1].split(" (or delete")[0]
    assert again == f"--cfg {run / 'config.yaml'} --train.name=k-again"
    assert train.main(again.split())["epochs"] == 1  # the command it gives runs
    assert (tmp_path / "k-again" / "best.pt").is_file()


def test_a_read_only_folder_is_named_with_the_cause_and_no_temporary_file_stays(tmp_path, monkeypatch):
    from fastmlic import run as run_module

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(run_module.os, "replace", read_only)
    folder = run_module.RunDir(tmp_path, is_main=True)
    expected = rf"cannot write {tmp_path}/checkpoints/step-00000005.pt: Read-only file system \(the folder"
    with pytest.raises(RunFolderError, match=expected):
        folder.save("checkpoints/step-00000005.pt", {"x": 1})  # how the checkpointer writes a state
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_folder_that_cannot_be_made_is_named_and_nothing_is_left(shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match=f"cannot create run folder {blocker}/r"):
        train.main(args(shards, blocker, "r", "torch", "--train.epochs=1"))


def test_another_runs_folder_is_refused_finished_or_failed(shards, tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "config.yaml").write_text("data: {}\n")
    (failed / "log.txt").write_text("error: something\n")
    with pytest.raises(RunFolderError, match=r"holds another run \(config.yaml, log.txt\); it has no "
                                             r"checkpoint to resume from.*--train.name"):  # fmt: skip
        train.main(args(shards, tmp_path, "failed", "torch", "--train.epochs=1"))
    assert (failed / "log.txt").read_text() == "error: something\n"  # nothing of it overwritten


def test_bad_input_found_while_building_leaves_no_folder(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="nosuch.json"):
        train.main(args(shards, tmp_path, "bad", "torch", "--data.val_split=nosuch"))
    assert not (tmp_path / "bad").exists()


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(shards, tmp_path, monkeypatch, capsys):
    from fastmlic import trainer
    from fastmlic.data import DataError

    def unreadable(*args, **kwargs):  # as DALI failing on the first batch's images
        raise DataError("train-000000.tar: member train_000003.jpg cannot be decoded")

    real = trainer.train_one_epoch
    monkeypatch.setattr(trainer, "train_one_epoch", unreadable)
    with pytest.raises(DataError):
        train.main(args(shards, tmp_path, "first", "torch", "--train.epochs=1"))
    assert not (tmp_path / "first").exists()
    assert "removed" in capsys.readouterr().err
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    assert train.main(args(shards, tmp_path, "first", "torch", "--train.epochs=1"))["epochs"] == 1  # again


def test_resume_may_extend_epochs_and_follow_moved_shards_but_nothing_else(shards, tmp_path):
    train.main(args(shards, tmp_path, "x", "torch", "--train.epochs=1"))
    run = tmp_path / "x"
    with pytest.raises(ValueError, match=r"optim.lr: run has 0.002.*\nkeys that may change on resume: .*"
                                         r"train.epochs \(larger than the run's\)"):  # fmt: skip
        train.main(["--resume", str(run), "--optim.lr=0.1"])
    other = rawdata.digits_shards(tmp_path / "other", 128, 64, 32)
    with pytest.raises(ValueError, match=r"holds other splits than the run's"):
        train.main(["--resume", str(run), f"--data.shards={other}", "--train.epochs=2"])
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    summary = train.main(["--resume", str(run), f"--data.shards={moved}", "--train.epochs=2"])
    assert summary["finished"] and summary["epochs"] == 2
    log = (run / "log.txt").read_text()
    assert "train.epochs: 1 -> 2" in log and f"-> {moved} (same classes and split sizes)" in log
    assert [r["epoch"] for r in rows(run, "epoch")] == [1, 2]
    with pytest.raises(ValueError, match="shorter than the run's 2"):
        train.main(["--resume", str(run), f"--data.shards={moved}", "--train.epochs=1"])


def test_errors_and_warnings_reach_log_txt(shards, tmp_path, monkeypatch):
    from fastmlic.config import RECIPE_CONFIGS
    from fastmlic.engine import NonFiniteLoss
    from fastmlic.recipes.base import RECIPES
    from fastmlic.recipes.standard import Standard
    from fastmlic.recipes.standard_config import StandardConfig

    class Explodes(Standard):
        def training_step(self, net, batch, ctx):
            terms = super().training_step(net, batch, ctx)
            if ctx.step >= 2:
                terms["cls"].value = terms["cls"].value * float("nan")
            if ctx.step == 1:  # not in the builder's probe step, which runs before the run folder exists
                warnings.warn("a warning from a training step", stacklevel=1)
            return terms

    monkeypatch.setitem(RECIPE_CONFIGS, "explodes", StandardConfig)
    monkeypatch.setitem(RECIPES, "explodes", Explodes)
    with pytest.raises(NonFiniteLoss, match="No checkpoint was written before it"):
        train.main(args(shards, tmp_path, "n", "torch", "--recipe.name=explodes"))
    log = (tmp_path / "n" / "log.txt").read_text()
    assert "warning: UserWarning: a warning from a training step" in log
    assert "error: loss is nan at step 3" in log


FAILING_RANK = """
import sys
from fastmlic import train
from fastmlic.cli import exit_on_user_error
from fastmlic.config import RECIPE_CONFIGS
from fastmlic.recipes.base import RECIPES
from fastmlic.recipes.standard import Standard
from fastmlic.recipes.standard_config import StandardConfig


class FailsOnRankOne(Standard):
    def training_step(self, net, batch, ctx):
        if ctx.rank == 1 and ctx.step == 3:
            raise RuntimeError("rank one broke at step 3")
        return super().training_step(net, batch, ctx)


RECIPE_CONFIGS["fails_on_rank_one"] = StandardConfig
RECIPES["fails_on_rank_one"] = FailsOnRankOne
sys.exit(exit_on_user_error(lambda: train.main(sys.argv[1:])))
"""


@pytest.mark.dist
def test_a_rank_that_raises_stops_every_rank_and_is_named(shards, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent(FAILING_RANK))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    proc = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29541", str(script),
         *args(shards, tmp_path, "dead", "torch", "--recipe.name=fails_on_rank_one", "--data.batch_size=16",
               "--train.dist_timeout_minutes=1")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode != 0
    assert time.monotonic() - began < 120
    assert "rank 1 failed: RuntimeError: rank one broke at step 3" in proc.stderr
    log = (tmp_path / "dead" / "log.txt").read_text()
    assert "error (rank 1): RuntimeError: rank one broke at step 3" in log


@pytest.mark.dist
def test_sigterm_to_the_launcher_stops_both_ranks_together_and_the_resume_is_exact(shards, tmp_path):
    """torchrun's agent, through fastmlic.launch (its own launcher, ending in one line), passes SIGTERM on."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--data.batch_size=16", "--model.backbone=test_convnext", "--ema.enabled=false",
              "--train.epochs=2"]  # fmt: skip

    def launch(port, *command, launcher=(torchrun,)):
        return subprocess.Popen([*launcher, "--nproc_per_node=2", f"--master_port={port}",
                                 str(ROOT / "fastmlic" / "train.py"), *command], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    whole = launch(29542, *args(shards, tmp_path, "whole", "torch", *common))
    assert whole.wait(timeout=300) == 0, whole.communicate()
    agent = launch(29543, *args(shards, tmp_path, "term", "torch", *common),
                   launcher=(sys.executable, "-m", "fastmlic.launch"))
    run = tmp_path / "term"
    wait_for_step(agent, run, STEPS_PER_EPOCH + 2)  # 8 steps per epoch: 256 images, 2 x 16 per step
    agent.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    out, err = agent.communicate(timeout=120)
    assert "preempted by SIGTERM" in out, err
    assert agent.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("launch: stopped by SIGTERM")
    newest = torch.load(sorted((run / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert newest["state"]["batches"] > 0 and len(newest["ranks"]) == 2
    resumed = launch(29544, "--resume", str(run))
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert step_losses(run) == step_losses(tmp_path / "whole")
    ours, theirs = (torch.load(x / "last.pt", weights_only=False)["model"] for x in (run, tmp_path / "whole"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
