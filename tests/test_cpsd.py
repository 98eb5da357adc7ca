"""CPSD (recipes/cpsd.py, recipes/cpsd_partition.py): class partitions (CGP, DGP, published files), teacher
logits scattered by class name, the distillation loss against a literal form, the student's step, and
the pipeline's stages, and partition -> part teachers -> student from one command on digits with K = 2
(interrupted, resumed, skipped when done)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rawdata
import torch
from conftest import ROOT
from torch import nn

from fastmlic import pipeline
from fastmlic.builder import build_recipe, check_recipe
from fastmlic.config import ConfigError, load_config
from fastmlic.data import Batch
from fastmlic.recipes import cpsd
from fastmlic.recipes import cpsd_partition as partition
from fastmlic.recipes.base import RECIPES, StepContext
from fastmlic.recipes.cpsd import (
    distillation_loss,
    import_published,
    partition_classes,
    read_partition,
    scatter_teacher_logits,
)


def planted(seed: int = 0):
    """9 classes in 3 blocks of 3 that co-occur within their block (diagonal = positives, as our shards)."""
    rng = np.random.default_rng(seed)
    block = np.arange(9) // 3
    cooc = np.where(block[:, None] == block[None, :], 60, 5) + rng.integers(0, 3, (9, 9))
    cooc = (cooc + cooc.T) // 2
    positives = np.full(9, 100)
    np.fill_diagonal(cooc, positives)
    return cooc, positives, block


def test_cgp_recovers_planted_blocks_and_dgp_spreads_them():
    cooc, positives, block = planted()
    assert partition_classes(cooc, positives, 3, "cgp", seed=0) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    for part in partition_classes(cooc, positives, 3, "dgp", seed=0):
        assert sorted(block[part].tolist()) == [0, 1, 2]  # one class of each co-occurring block
    assert partition_classes(cooc, positives, 1) == [list(range(9))]
    with pytest.raises(ValueError, match="--parts 10: must be between 1 and the number of classes"):
        partition_classes(cooc, positives, 10)


def test_the_partition_is_deterministic_under_a_seed():
    rng = np.random.default_rng(3)
    cooc = rng.integers(0, 50, (12, 12))
    cooc = cooc + cooc.T
    positives = rng.integers(50, 100, 12)
    for mode in ("cgp", "dgp"):
        runs = [partition_classes(cooc, positives, 4, mode, seed=7) for _ in range(2)]
        assert runs[0] == runs[1] and sorted(i for p in runs[0] for i in p) == list(range(12))


def test_published_files_map_by_class_name(tmp_path):
    classes = ["person", "bicycle", "car", "airplane"]  # category-id order, as our shards
    alphabetical = sorted(classes)  # ["airplane", "bicycle", "car", "person"]: the file's index order
    published = tmp_path / "idx_coocurrence2_0.json"
    published.write_text(json.dumps([{"3": 0, "0": 1}, {"1": 0, "2": 1}]))  # {person, airplane}, {bike, car}
    assert import_published(published, alphabetical, classes) == [[0, 3], [1, 2]]


def test_teacher_logits_are_scattered_to_the_students_classes_by_name():
    classes = ["a", "b", "c", "d"]
    first, second = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
    target = scatter_teacher_logits([first, second], [["d", "b"], ["a", "c"]], classes)
    assert target.tolist() == [[3.0, 2.0, 4.0, 1.0]]
    with pytest.raises(ValueError, match=r"do not cover each student class once: missing \['c'\]"):
        scatter_teacher_logits([first, first[:, :1]], [["d", "b"], ["a"]], classes)


def literal_distillation(s, t_cgp, t_dgp, alpha, metric, temperature):
    """The original's terms one sample and one class at a time."""

    def distance(t):
        total = 0.0
        for i in range(s.shape[0]):
            if metric == "mse":
                total += sum((s[i, c] - t[i, c]) ** 2 for c in range(s.shape[1]))
            else:
                p_t = torch.softmax(t[i] / temperature, 0)
                log_p_s = torch.log_softmax(s[i] / temperature, 0)
                total += sum(p_t[c] * (torch.log(p_t[c]) - log_p_s[c]) for c in range(s.shape[1]))
        return total * (temperature**2 if metric == "kl" else 1.0)

    return alpha * 0.5 * distance(t_cgp) + round(0.5 - alpha * 0.5, 2) * distance(t_dgp)


@pytest.mark.parametrize("metric", ["mse", "kl"])
@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_the_distillation_loss_equals_its_literal_form(rng, metric, alpha):
    s = torch.from_numpy(rng.normal(size=(4, 5))).requires_grad_()
    t_cgp, t_dgp = (torch.from_numpy(rng.normal(size=(4, 5))) for _ in range(2))
    actual = distillation_loss(s, t_cgp, t_dgp, alpha, metric, temperature=4.0)
    expected = literal_distillation(s, t_cgp, t_dgp, alpha, metric, 4.0)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
    (g_actual,) = torch.autograd.grad(actual, s)
    (g_expected,) = torch.autograd.grad(expected, s)
    torch.testing.assert_close(g_actual.double(), g_expected, rtol=1e-4, atol=1e-6)


class FixedTeacher(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def predict(self, images):
        return {"logits": self.logits[: len(images)]}


def test_the_students_step_reads_every_teacher_and_halves_the_classification():
    cfg = load_config("digits", ["--model.backbone=test_resnet", "--recipe.name=cpsd", "--loss.name=asl",
                                 "--recipe.cgp_teachers=[a.pt, b.pt]",
                                 "--recipe.dgp_teachers=[c.pt, d.pt]"])  # fmt: skip
    classes = ["0", "1", "2", "3"]
    recipe = build_recipe(cfg, classes)
    assert list(recipe.teacher_paths()) == ["cgp0", "cgp1", "dgp0", "dgp1"]
    g = torch.Generator().manual_seed(0)
    parts = {"cgp0": ["0", "1"], "cgp1": ["2", "3"], "dgp0": ["0", "2"], "dgp1": ["3", "1"]}
    for name, names in parts.items():
        recipe.teachers[name] = FixedTeacher(torch.randn(3, 2, generator=g))
        recipe.teacher_classes[name] = names
    module = recipe.build_module()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]]).float()
    ctx = StepContext(step=0, epoch=0, total_steps=1, device=torch.device("cpu"), amp="off", rank=0,
                      world_size=1)  # fmt: skip
    terms = recipe.training_step(module, Batch([images], targets, None, ["x", "y", "z"]), ctx)
    assert (terms["cls"].weight, terms["cls"].reduction, terms["distill"].reduction) == (0.5, "sum", "sum")
    logits = module(images)["logits"]
    t = {n: recipe.teachers[n].logits for n in parts}
    cgp = torch.cat([t["cgp0"], t["cgp1"]], 1)  # classes 0 1 2 3
    dgp = torch.stack([t["dgp0"][:, 0], t["dgp1"][:, 1], t["dgp0"][:, 1], t["dgp1"][:, 0]], 1)
    torch.testing.assert_close(terms["distill"].value, distillation_loss(logits, cgp, dgp))


def test_the_student_needs_its_teachers_and_the_summed_loss():
    cfg = load_config("digits", ["--recipe.name=cpsd"])  # a pipeline preset: the pipeline fills them in
    with pytest.raises(ConfigError, match="recipe.cgp_teachers and recipe.dgp_teachers are empty"):
        build_recipe(cfg, ["0", "1"]).teacher_paths()
    with pytest.raises(ConfigError, match="keep loss.reduction=sum"):
        check_recipe(load_config("digits", ["--recipe.name=cpsd", "--recipe.cgp_teachers=[a]",
                                            "--recipe.dgp_teachers=[b]", "--loss.reduction=mean"]))
    with pytest.raises(ConfigError, match="recipe.metric"):
        load_config("digits", ["--recipe.name=cpsd", "--recipe.metric=l1"])
    with pytest.raises(ConfigError, match="recipe.parts=0 must be at least 1"):
        load_config("psd_digits", ["--recipe.parts=0"])


@pytest.mark.parametrize("overrides, message", [
    ("['--data.classes=[a]']", "data.classes are set by the pipeline"),
    ("[--recipe.alpha=1]", "recipe.alpha are set by the pipeline"),
    ("[--optim.lrr=1]", r"recipe.teacher_overrides: unknown config key 'optim.lrr'.*did you mean 'optim.lr'"),
    ("[lr=1]", "recipe.teacher_overrides: cannot read 'lr=1'"),
])  # fmt: skip
def test_teacher_overrides_are_checked_when_the_preset_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("psd_digits", [f"--recipe.teacher_overrides={overrides}"]))


def test_the_presets_carry_the_papers_settings():
    for name in ("psd_mscoco", "psd_nuswide"):
        cfg = load_config(name)
        r, o = cfg.recipe, cfg.optim
        assert (r.name, r.parts, r.alpha, r.metric) == ("cpsd", 5, 0.5, "mse")
        assert (o.name, o.lr, o.pct_start) == ("adam", 1e-5, 0.1)
        t, d = cfg.train, cfg.data
        assert (t.epochs, cfg.ema.decay, d.batch_size, d.image_size) == (80, 0.9997, 24, 448)
        assert (cfg.loss.gamma_neg, cfg.loss.gamma_pos, cfg.loss.clip) == (4.0, 0.0, 0.05)
        teacher = cpsd.teacher_config(cfg, cfg_root(cfg) / "cgp0", ["person"])
        assert (teacher.recipe.name, teacher.optim.lr, teacher.data.classes) == ("standard", 1e-4, ["person"])
    assert load_config("psd_digits").recipe.parts == 2


def cfg_root(cfg):
    return Path(cfg.train.out_dir) / cfg.train.name


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("cpsd"), 128, 64, 32)


def tiny(shards, out) -> list[str]:
    return [f"--data.shards={shards}", f"--train.out_dir={out}", "--data.image_size=32", "--data.workers=0",
            "--data.backend=torch", "--model.backbone=test_resnet", "--train.epochs=1"]  # fmt: skip


def test_the_stages_derive_teachers_from_the_partition_and_the_student_from_the_teachers(shards, tmp_path):
    cfg = load_config("psd_digits", [*tiny(shards, tmp_path), "--recipe.teacher_overrides=[--optim.lr=0.01]"])
    root = tmp_path / "psd_digits"
    stages = {s.name: s for s in RECIPES["cpsd"].stages(cfg, root)}
    assert list(stages) == ["partition", "cgp0", "cgp1", "dgp0", "dgp1", "student"]
    assert stages["student"].needs == ("cgp0", "cgp1", "dgp0", "dgp1")
    assert stages["cgp1"].needs == ("partition",)
    stages["partition"].make()
    classes = json.loads((shards / "digits" / "train.json").read_text())["classes"]
    for mode in ("cgp", "dgp"):
        written = json.loads((root / f"partition_{mode}.json").read_text())
        assert (written["mode"], written["k"], written["seed"], len(written["parts"])) == (mode, 2, 0, 2)
        for k, part in enumerate(read_partition(root / f"partition_{mode}.json", classes)):
            teacher = stages[f"{mode}{k}"].config()
            assert (teacher.recipe.name, teacher.data.classes, teacher.optim.lr) == ("standard", part, 0.01)
            assert Path(teacher.train.out_dir) / teacher.train.name == root / f"{mode}{k}"
            assert teacher.model.backbone == "test_resnet" and teacher.train.epochs == 1  # the command's
    student = stages["student"].config()
    assert student.recipe.cgp_teachers == [str(root / "cgp0" / "best.pt"), str(root / "cgp1" / "best.pt")]
    assert student.recipe.dgp_teachers == [str(root / "dgp0" / "best.pt"), str(root / "dgp1" / "best.pt")]
    assert (student.optim.lr, Path(student.train.out_dir) / student.train.name) == (2e-3, root / "student")


def test_a_given_partition_file_is_used_by_class_name_and_must_have_k_parts(shards, tmp_path):
    given = tmp_path / "mine.json"
    partition.write_partition(given, ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"],
                              [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], mode="cgp")  # fmt: skip
    cfg = load_config("psd_digits", [*tiny(shards, tmp_path), f"--recipe.cgp_partition={given}"])
    stage = RECIPES["cpsd"].stages(cfg, tmp_path / "p")[0]
    stage.make()
    parts = json.loads((tmp_path / "p" / "partition_cgp.json").read_text())
    assert [p["classes"] for p in parts["parts"]] == [["0", "2", "4", "6", "8"], ["1", "3", "5", "7", "9"]]
    assert parts["from"] == str(given)
    cfg = load_config("psd_digits", [*tiny(shards, tmp_path), f"--recipe.cgp_partition={given}",
                                     "--recipe.parts=3"])  # fmt: skip
    with pytest.raises(ValueError, match="mine.json: 2 cgp parts, recipe.parts=3"):
        RECIPES["cpsd"].stages(cfg, tmp_path / "q")[0].make()


def test_one_command_runs_partition_teachers_and_student_and_resumes(shards, tmp_path, capsys):
    args = ["--cfg", "psd_digits", *tiny(shards, tmp_path), "--train.log_every=1"]
    root = tmp_path / "psd_digits"
    with pytest.raises(ValueError, match="stage student needs cgp0, cgp1, dgp0, dgp1 first"):
        pipeline.main([*args, "--stage", "student"])
    with pytest.raises(ConfigError, match="--stage teacher: the stages of psd_digits are partition, cgp0"):
        pipeline.main([*args, "--stage", "teacher"])
    # one teacher alone (as on its own GPU), stopped after one of two epochs, then resumed
    two = [*args, "--train.epochs=2", "--stage", "partition", "--stage", "cgp0"]
    out = pipeline.main([*two, "--train.stop_after=1"])
    assert out["stages"]["cgp0"] == "interrupted" and "run the same command" in capsys.readouterr().out
    out = pipeline.main(two)
    assert out["ran"] == ["cgp0"] and out["stages"]["cgp0"] == "done"
    capsys.readouterr()
    assert json.loads((root / "cgp0" / "summary.json").read_text())["epochs"] == 2
    out = pipeline.main(args)  # the rest; cgp0 (2 epochs, done) is not retrained
    assert out["ran"] == ["cgp1", "dgp0", "dgp1", "student"]
    assert set(out["stages"].values()) == {"done"}
    screen = capsys.readouterr().out
    classes = json.loads((shards / "digits" / "train.json").read_text())["classes"]
    student = torch.load(root / "student" / "best.pt", weights_only=False)
    assert student["classes"] == classes and set(student["teachers"]) == {"cgp0", "cgp1", "dgp0", "dgp1"}
    for name in ("cgp0", "cgp1", "dgp0", "dgp1"):
        part = torch.load(root / name / "best.pt", weights_only=False)["classes"]
        parts = json.loads((root / f"partition_{name[:3]}.json").read_text())["parts"]
        assert part == parts[int(name[3])]["classes"]  # a teacher knows only its part's classes
        line = next(x for x in screen.splitlines() if x.startswith(name + " "))
        fields = line.split()  # name status classes best-mAP student-there epochs folder
        assert fields[1] == ("done" if name == "cgp0" else "ran")
        assert int(fields[2]) == len(part) and 0 <= float(fields[3]) <= 1 and 0 <= float(fields[4]) <= 1
    rows = [json.loads(x) for x in (root / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert steps and all(r["loss"] == pytest.approx(0.5 * r["loss_cls"] + r["loss_distill"], rel=1e-5)
                         for r in steps)  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/last.pt")}
    out = pipeline.main(args)  # everything finished: nothing runs again
    assert out["ran"] == [] and {p: p.stat().st_mtime_ns for p in root.glob("*/last.pt")} == stamps
    help_text = subprocess.run([sys.executable, "-m", "fastmlic.pipeline", "--cfg", "psd_digits", "--help"],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert "--stage" in help_text and "CUDA_VISIBLE_DEVICES=1" in help_text and "--recipe.parts" in help_text


def test_the_pipeline_runs_every_stage_on_two_gloo_processes(shards, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    command = [torchrun, "--nproc_per_node=2", "--master_port=29547", "-m", "fastmlic.pipeline",
               "--cfg", "psd_digits", *tiny(shards, tmp_path), "--data.batch_size=16"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("cgp0", "cgp1", "dgp0", "dgp1", "student"):
        assert json.loads((tmp_path / "psd_digits" / name / "summary.json").read_text())["finished"]


def test_the_pipeline_runs_a_single_run_recipe_as_one_stage(shards, tmp_path, capsys):
    out = pipeline.main(["--cfg", "digits", *tiny(shards, tmp_path), "--status"])
    assert out["stages"] == {"train": "to do"} and "train" in capsys.readouterr().out


# --------------------------------------------------------------------------- the published partitions

# the part sizes of the official data/{idx,nus}_{coocurrence,cluster}5_0.json (Robbie-Xu/CPSD@bf8784b),
# in their order: teacher k trains part k
PUBLISHED_K5 = {("mscoco", "cgp"): [21, 26, 7, 22, 4], ("mscoco", "dgp"): [21, 29, 20, 1, 9],
                ("nuswide", "cgp"): [21, 31, 4, 8, 17], ("nuswide", "dgp"): [19, 26, 20, 14, 2]}  # fmt: skip


def test_the_published_partitions_ship_and_split_their_classes_exactly_once():
    for dataset, classes in (("mscoco", 80), ("nuswide", 81)):
        for mode in ("cgp", "dgp"):
            for k in (1, 2, 3, 5, 8, 13):
                path = partition.published_partition(dataset, k, mode)
                data = json.loads(path.read_text())
                names = [c for p in data["parts"] for c in p["classes"]]
                assert (data["k"], data["num_classes"], len(set(names))) == (k, classes, classes), path
                assert data["source"].startswith("github.com/Robbie-Xu/CPSD@")
                shuffled = sorted(names, key=lambda c: hash(c) % 97)  # our shards' order is not theirs
                assert read_partition(path, shuffled) == [p["classes"] for p in data["parts"]]
    for (dataset, mode), sizes in PUBLISHED_K5.items():
        parts = json.loads(partition.published_partition(dataset, 5, mode).read_text())["parts"]
        assert [len(p["classes"]) for p in parts] == sizes
    nus = json.loads(partition.published_partition("nuswide", 2, "cgp").read_text())
    assert "earthquake" in [c for p in nus["parts"] for c in p["classes"]]  # nuswide_cluster.py's name
    with pytest.raises(ValueError, match="no published DGP partition of voc2007 into 5 parts"):
        partition.published_partition("voc2007", 5, "dgp")


def test_the_paper_presets_read_the_published_partitions_by_class_name(tmp_path, monkeypatch):
    published = json.loads(partition.published_partition("mscoco", 5, "dgp").read_text())
    names = sorted(c for p in published["parts"] for c in p["classes"])[::-1]  # another order than the file's
    cfg = load_config("psd_mscoco", [f"--train.out_dir={tmp_path}"])
    assert (cfg.recipe.cgp_partition, cfg.recipe.dgp_partition, cfg.recipe.teacher_bn) == (
        "published", "published", "batch")
    info = types.SimpleNamespace(classes=names, cooccurrence=None, positives=None)
    monkeypatch.setattr(cpsd, "split_classes", lambda cfg: info)  # the full COCO shards, as far as read
    files = {mode: tmp_path / f"partition_{mode}.json" for mode in ("cgp", "dgp")}
    cpsd.write_partitions(cfg, files)
    written = read_partition(files["dgp"], names)
    assert sorted(map(sorted, written)) == sorted(sorted(p["classes"]) for p in published["parts"])
    assert json.loads(files["dgp"].read_text())["from"].endswith("cpsd_published/mscoco_dgp_k5.json")


def test_a_computed_partition_with_a_tiny_part_is_reported(tmp_path, monkeypatch):
    classes = [str(i) for i in range(10)]
    cooc = np.ones((10, 10), int)  # class 9 hardly co-occurs: N-Cut gives it a part of its own
    cooc[:9, :9] = 40
    np.fill_diagonal(cooc, 50)
    info = types.SimpleNamespace(classes=classes, cooccurrence=cooc.tolist(), positives=[50] * 10)
    monkeypatch.setattr(cpsd, "split_classes", lambda cfg: info)
    cfg = load_config("psd_digits", [f"--train.out_dir={tmp_path}"])
    with pytest.warns(UserWarning, match=r"computed CGP partition is unbalanced: parts of \[9, 1\] classes "
                                         r"\(part 1: 9\).*recipe.cgp_partition=published"):
        cpsd.write_partitions(cfg, {"cgp": tmp_path / "partition_cgp.json"})
    assert partition.tiny_parts([[0, 1, 2, 3], [4, 5, 6, 7]], 8) == []


def test_the_teachers_may_normalise_by_batch_statistics_as_the_official_student_runs_them():
    from torch.nn.modules.batchnorm import _BatchNorm

    for mode, training in (("eval", False), ("batch", True)):
        cfg = load_config("digits", ["--model.backbone=test_resnet", "--recipe.name=cpsd",
                                     f"--recipe.teacher_bn={mode}"])  # fmt: skip
        recipe = build_recipe(cfg, ["0", "1"])
        teacher = build_recipe(load_config("digits", ["--model.backbone=test_resnet"]), ["0", "1"])
        recipe.teachers["cgp0"] = teacher.build_module().eval().requires_grad_(False)  # as the builder does
        recipe.setup(recipe.build_module(), None)
        layers = list(recipe.teachers["cgp0"].modules())
        assert {m.training for m in layers if isinstance(m, _BatchNorm)} == {training}
        assert not any(m.training for m in layers if not isinstance(m, _BatchNorm) and not list(m.children()))
        assert not any(p.requires_grad for p in recipe.teachers["cgp0"].parameters())


def test_a_stopped_stage_says_how_to_continue_the_pipeline_and_exits_as_the_run(shards, tmp_path, capsys,
                                                                                  monkeypatch):  # fmt: skip
    from fastmlic.cli import exit_on_user_error
    from fastmlic.preemption import INTERRUPTED, Preempted

    def stopped(stage, dist, cfg, overrides):  # a run stopped by Ctrl-C after saving, as Trainer raises it
        raise Preempted("preempted by SIGINT at step 3; saved ...", signal.SIGINT)

    monkeypatch.setattr(pipeline, "run_stage", stopped)
    args = ["--cfg", "psd_digits", *tiny(shards, tmp_path), "--stage", "partition"]
    assert exit_on_user_error(lambda: pipeline.main(args)) == INTERRUPTED
    printed = capsys.readouterr().out
    assert f"or continue the pipeline: python -m fastmlic.pipeline {' '.join(args)}" in printed
