"""CPSD (recipes/cpsd.py, fastmlic/partition.py): class partitions (CGP, DGP, published files), teacher
logits scattered by class name, the distillation loss against a literal form, the student's step, and
partition -> part teachers -> student end to end on digits with K = 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rawdata
import torch
from torch import nn

from fastmlic import partition, train
from fastmlic.config import ConfigError, load_config
from fastmlic.data import Batch
from fastmlic.recipes import StepContext
from fastmlic.recipes.cpsd import (
    distillation_loss,
    import_published,
    partition_classes,
    read_partition,
    scatter_teacher_logits,
)
from fastmlic.trainer import build_recipe


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
    with pytest.raises(ConfigError, match="recipe.cgp_teachers and recipe.dgp_teachers"):
        load_config("digits", ["--recipe.name=cpsd"])
    with pytest.raises(ConfigError, match="keep loss.reduction=sum"):
        load_config("digits", ["--recipe.name=cpsd", "--recipe.cgp_teachers=[a]", "--recipe.dgp_teachers=[b]",
                               "--loss.reduction=mean"])  # fmt: skip
    with pytest.raises(ConfigError, match="recipe.metric"):
        load_config("digits", ["--recipe.name=cpsd", "--recipe.metric=l1"])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("cpsd"), 128, 64, 32)


def test_partition_then_part_teachers_then_the_student_on_digits(shards, tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "fastmlic.partition", "--help"], capture_output=True,
                               text=True).stdout  # fmt: skip
    assert "--parts" in help_text and "--published" in help_text
    written = partition.main(["--data", "digits", "--shards", str(shards), "--parts", "2"])
    assert [p.name for p in written] == ["partition_cgp_k2_seed0.json", "partition_dgp_k2_seed0.json"]
    classes = json.loads((shards / "digits" / "train.json").read_text())["classes"]
    tiny = [f"--data.shards={shards}", f"--train.out_dir={tmp_path}", "--data.image_size=32",
            "--data.workers=0", "--data.backend=torch", "--model.backbone=test_resnet",
            "--train.epochs=1"]  # fmt: skip
    teachers = {}
    for path in written:
        mode = json.loads(path.read_text())["mode"]
        for k, part in enumerate(read_partition(path, classes)):
            name = f"{mode}{k}"
            subset = f"--data.classes=[{', '.join(part)}]"
            train.main(["--cfg", "digits", *tiny, subset, f"--train.name={name}"])
            best = torch.load(tmp_path / name / "best.pt", weights_only=False)
            assert best["classes"] == part  # a teacher knows only its part's classes
            teachers.setdefault(mode, []).append(str(tmp_path / name / "best.pt"))
    summary = train.main(["--cfg", "digits", *tiny, "--recipe.name=cpsd", "--train.name=student",
                          f"--recipe.cgp_teachers=[{', '.join(teachers['cgp'])}]",
                          f"--recipe.dgp_teachers=[{', '.join(teachers['dgp'])}]",
                          "--train.log_every=1"])  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert steps and all(r["loss"] == pytest.approx(0.5 * r["loss_cls"] + r["loss_distill"], rel=1e-5)
                         for r in steps)  # fmt: skip
    assert summary["best"]["mAP"] > 0
    student = torch.load(tmp_path / "student" / "best.pt", weights_only=False)
    assert student["classes"] == classes and set(student["teachers"]) == {"cgp0", "cgp1", "dgp0", "dgp1"}
