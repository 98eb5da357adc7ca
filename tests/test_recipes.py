"""The recipe contract: the typed `recipe` config section, loss terms that train N processes as one,
every head x recipe under DDP, frozen teachers, and MulCon's label-level contrastive term."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
import rawdata
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import ROOT, assert_close

from fastmlic import train
from fastmlic.builder import build_recipe, check_recipe, freeze_unused
from fastmlic.config import RECIPE_CONFIGS, ConfigError, RecipeConfig, describe, load_config, option
from fastmlic.data import Batch
from fastmlic.engine import combine_terms
from fastmlic.models import HEADS
from fastmlic.recipes.base import RECIPES, StepContext, Term
from fastmlic.recipes.standard import Standard

# --------------------------------------------------------------------------- config


def test_the_recipe_section_is_typed_by_the_recipe_it_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  head: label_attention\nrecipe:\n  weight: 0.3\n  name: mulcon\n")
    cfg = load_config(path, ["--recipe.temperature=0.1"])  # name applies first, wherever it is written
    assert (cfg.recipe.name, cfg.recipe.weight, cfg.recipe.temperature) == ("mulcon", 0.3, 0.1)
    assert cfg.to_dict()["recipe"] == {"name": "mulcon", "stage": 2, "weight": 0.3, "temperature": 0.1,
                                       "proj_dim": 128, "init_ema": False, "first_stage": "",
                                       "first_stage_epoch": 0}  # fmt: skip
    assert load_config(cfg.to_dict()) == cfg  # a checkpoint's config dict round-trips
    # another recipe on the command line starts from that recipe's defaults
    assert load_config(path, ["--recipe.name=standard"]).recipe == RECIPE_CONFIGS.lookup("standard")()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--recipe.name=mulcom"], r"recipe.name='mulcom' is not a known recipe; did you mean 'mulcon'"),
        (["--recipe.weight=1"], r"unknown config key 'recipe.weight' of recipe 'standard'"),
        (["--recipe.name=mulcon", "--model.head=label_attention", "--recipe.wieght=1"],
         r"'recipe.wieght' of recipe 'mulcon'; did you mean 'recipe.weight'"),
        (["--recipe.name=mulcon", "--model.head=label_attention", "--recipe.proj_dim=1.5"],
         r"recipe.proj_dim: expected int"),
        (["--recipe.name=mulcon"], r"recipe.name=mulcon needs label_features .*model.head=.*label_attention"),
        (["--model.head=linea"], r"model.head='linea' is not a known head; did you mean 'linear'"),
    ],
)  # fmt: skip
def test_recipe_keys_are_as_strict_as_every_other_section(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("digits", overrides))


def test_help_lists_every_recipe_with_its_keys():
    text = describe()
    for name, config_type in RECIPE_CONFIGS.items():
        summary = config_type.__doc__.strip().splitlines()[0]
        assert f"  {name}: {summary}" in text
        assert not summary.startswith(config_type.__name__)  # its docstring, not the one @dataclass writes
        for field in dataclasses.fields(config_type):  # not its ClassVars (`released`: a text, not a key)
            if field.name != "name":
                assert f"--recipe.{field.name}=" in text, (name, field.name)


def test_every_recipe_has_its_keys_and_its_training_code_under_one_name():
    assert list(RECIPE_CONFIGS) == list(RECIPES)
    for name in RECIPES:
        assert load_config("digits", [f"--recipe.name={name}"]).recipe.name == name


def test_help_shows_a_config_whose_head_does_not_fit_its_recipe_and_the_run_refuses_it():
    overrides = ["--recipe.name=mulcon", "--model.head=linear"]
    cfg = load_config("digits", overrides)  # what --help shows: it loads no recipe code
    assert cfg.model.head == "linear"
    with pytest.raises(ConfigError, match="needs label_features"):
        check_recipe(cfg)  # what a run checks before it builds anything


# --------------------------------------------------------------------------- DDP scaling


def test_each_reduction_has_the_scale_that_makes_n_ranks_one_process():
    x = torch.tensor(2.0)
    for world, acc in ((1, 1), (4, 1), (4, 3)):
        assert Term(x, "sum").backward_scale(world, acc) == world  # summed over micro-batches
        assert Term(x, "mean").backward_scale(world, acc) == pytest.approx(1 / acc)
        assert Term(x, "global").backward_scale(world, acc) == pytest.approx(world / acc)
        assert Term(x, "sum").report_scale(world) == world
        assert Term(x, "mean").report_scale(world) == Term(x, "global").report_scale(world) == 1
    backward, report = combine_terms({"a": Term(x, "sum", 0.5), "b": Term(x, "global", 2.0)}, 2, 1)
    assert backward.item() == pytest.approx(0.5 * 2 * 2 + 2.0 * 2 * 2)
    assert report.item() == pytest.approx(0.5 * 2 * 2 + 2.0 * 2)


GLOBAL_BATCH = 8
LABEL_ATTENTION = "--model.head=label_attention"
TERM_KINDS = {  # the recipe and the config that give each kind of term
    "sum (ASL)": [LABEL_ATTENTION, "--recipe.name=standard", "--loss.name=asl", "--loss.reduction=sum"],
    "mean (BCE)": [LABEL_ATTENTION, "--recipe.name=standard", "--loss.name=bce", "--loss.reduction=mean"],
    "global (label contrastive over gathered slots, two views)": [
        LABEL_ATTENTION, "--recipe.name=mulcon", "--loss.name=bce", "--loss.reduction=mean",
        "--recipe.weight=2.0"],
    "mean (contrastive co-occurrence per image, ASL x 1000 mean)": [
        "--model.head=cooccurrence", "--recipe.name=coco", "--loss.reduction=mean", "--loss.scale=1000",
        "--recipe.weight=2.0", "--recipe.dropout=0", "--recipe.feedforward=32", "--recipe.num_steps=2"],
}  # fmt: skip


def _toy_setup(kind: str):
    cfg = load_config("digits", ["--model.backbone=test_convnext", "--model.embed_dim=16", "--model.heads=2",
                                 *TERM_KINDS[kind]])  # fmt: skip
    torch.manual_seed(0)
    recipe = build_recipe(cfg, [f"c{i}" for i in range(5)])
    module = recipe.build_module()
    # as the trainer builds it: the backbone's own pooling norm, which these heads do not read, is frozen
    views = recipe.data_request(cfg).views
    assert freeze_unused(recipe, module, cfg, views, torch.device("cpu"), "off") == [
        "model.backbone.model.head.norm.weight", "model.backbone.model.head.norm.bias"]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    targets = (torch.rand(GLOBAL_BATCH, 5, generator=g) < 0.5).float()
    targets[:, 0] = 1  # every image has a positive slot in label 0: the contrastive term has positives
    return recipe, module, images, targets


def _grads_of_step(recipe, net, module, images, targets, world_size):
    ctx = StepContext(step=0, epoch=0, total_steps=1, device=torch.device("cpu"), amp="off", rank=0,
                      world_size=world_size)  # fmt: skip
    # two views: MulCon's stage two puts both through one forward; the other terms read view 0
    batch = Batch([images, images.flip(-1)], targets, None, [str(i) for i in range(len(images))])
    backward, _ = combine_terms(recipe.training_step(net, batch, ctx), world_size, 1)
    backward.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, kind: str, store: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    recipe, module, images, targets = _toy_setup(kind)
    net = torch.nn.parallel.DistributedDataParallel(module)
    half = slice(rank * GLOBAL_BATCH // 2, (rank + 1) * GLOBAL_BATCH // 2)
    grads = _grads_of_step(recipe, net, module, images[half], targets[half], world_size=2)
    if rank == 0:
        torch.save(grads, out)
    # DDP's reducer holds the group and its last Gloo work: freed after the group (at exit) it can abort
    # the process ("terminate called without an active exception", seen once in CI; fastmlic.distributed
    # .cleanup says how often): it goes first, and no rank tears down while its peer is in a collective
    del net
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("kind", list(TERM_KINDS))
def test_two_processes_give_the_gradient_of_one_process_on_the_global_batch(kind, tmp_path):
    recipe, module, images, targets = _toy_setup(kind)
    expected = _grads_of_step(recipe, module, module, images, targets, world_size=1)
    mp.spawn(_ddp_worker, args=(kind, str(tmp_path / "store"), str(tmp_path / "grads.pt")), nprocs=2)
    actual = torch.load(tmp_path / "grads.pt")
    assert actual.keys() == expected.keys() and len(actual) > 10
    for name, value in expected.items():
        assert_close(actual[name], value.double(), torch.float32, f"{kind}: {name}")


# --------------------------------------------------------------------------- every head x recipe


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("recipes"), 64, 32, 32)


def base_args(shards, out):
    return ["--cfg", "digits", f"--data.shards={shards}", f"--train.out_dir={out}", "--data.image_size=32",
            "--data.batch_size=8", "--data.workers=0", "--data.backend=torch",
            "--model.backbone=test_convnext", "--train.epochs=2", "--train.log_every=1"]  # fmt: skip


def small_head(head: str) -> list[str]:
    """Small widths for the heads that read them (a run refuses a head key its head ignores)."""
    small = {"embed_dim": 16, "heads": 2}
    return [f"--model.{k}={v}" for k, v in small.items() if k in HEADS[head].model_keys]


def fits(head: str, recipe: str) -> bool:
    return all(o in HEADS[head].outputs for o in RECIPES[recipe].head_outputs)


def gives(head: str, recipe: str) -> bool:
    return all(n in RECIPES[recipe].head_inputs for n in getattr(HEADS[head], "needs", ()))


def trains(head: str, recipe: str) -> bool:
    """The pair trains alone under torchrun: the head fits the recipe, and the recipe is no student of
    teacher runs (CPSD's: tests/test_cpsd.py)."""
    return fits(head, recipe) and gives(head, recipe) and recipe != "cpsd"


def pair_args(shards, out, head: str, recipe: str) -> list[str]:
    args = [*base_args(shards, out), f"--model.head={head}", *small_head(head), f"--recipe.name={recipe}",
            f"--train.name={head}-{recipe}"]  # fmt: skip
    if "embeddings" in RECIPES[recipe].head_inputs:  # class-name embeddings beside the shards
        args += ["--recipe.embeddings=random", "--recipe.attention_dim=16", "--recipe.feedforward=32"]
    if recipe == "oass":  # its cuts' pieces, half the image, need a stride-32 cell each; the test
        args += ["--data.image_size=64", "--recipe.last_stride=2"]  # ConvNeXt has no ResNet layer4
    return args


@pytest.fixture(scope="module")
def two_gloo_processes(shards, tmp_path_factory):
    """Every pair that trains, one after another in one torchrun of two Gloo processes
    (tests/train_several.py): the run folders, and torchrun's result for a failure's message."""
    out = tmp_path_factory.mktemp("pairs")
    pairs = [(h, r) for h in HEADS for r in RECIPES if trains(h, r)]
    if any("embeddings" in RECIPES[r].head_inputs for _, r in pairs):
        tool = [sys.executable, str(ROOT / "tools" / "label_embeddings.py"), "--data", "digits", "--shards"]
        subprocess.run([*tool, str(shards), "--backend", "random"], check=True, capture_output=True)
    (out / "runs.json").write_text(json.dumps([pair_args(shards, out, h, r) for h, r in pairs]))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    result = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29541", str(ROOT / "tests" / "train_several.py"),
         str(out / "runs.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    return out, result


@pytest.mark.dist
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_and_recipe_trains_on_two_gloo_processes_or_is_refused(shards, tmp_path, head, recipe,
                                                                         request):  # fmt: skip
    args = [*base_args(shards, tmp_path), f"--model.head={head}", *small_head(head),
            f"--recipe.name={recipe}", "--train.name=r"]
    if not fits(head, recipe):
        with pytest.raises(ConfigError, match=f"model.head={head} does not give"):
            check_recipe(load_config("digits", args[2:]))
        return
    if not gives(head, recipe):
        with pytest.raises(ConfigError, match=f"model.head={head} needs .* which recipe.name={recipe}"):
            check_recipe(load_config("digits", args[2:]))
        return
    if recipe == "cpsd":  # a student learns from teacher runs: tests/test_cpsd.py
        with pytest.raises(ConfigError, match="recipe.cgp_teachers and recipe.dgp_teachers are empty"):
            build_recipe(load_config("digits", args[2:]), ["0", "1"]).teacher_paths()
        return
    out, result = request.getfixturevalue("two_gloo_processes")  # only pairs that train start torchrun
    metrics = out / f"{head}-{recipe}" / "metrics.jsonl"
    assert metrics.is_file(), f"{head}-{recipe} did not start; torchrun said: {result.stderr[-3000:]}"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 2 * 64 // 16, result.stderr[-3000:]  # every step of both epochs, global batch 16
    assert all(r["loss"] == r["loss"] for r in steps)  # finite, and logged every step
    if recipe == "mulcon":
        assert all("loss_contrastive" in r and "loss_cls" in r for r in steps)
    assert result.returncode == 0, result.stderr[-3000:]  # a later pair, or the end of the group


# --------------------------------------------------------------------------- frozen teachers


@dataclass
class DistillConfig(RecipeConfig):
    name: str = option("distill", "test recipe")
    teacher: str = option("", "checkpoint of the teacher run")


class Distill(Standard):
    """A test recipe: classification plus a mean BCE towards a frozen teacher's scores."""

    seen: list = []

    def teacher_paths(self):
        return {"teacher": self.cfg.recipe.teacher}

    def training_step(self, net, batch, ctx):
        teacher = self.teachers["teacher"]
        Distill.seen.append((teacher.training, any(p.requires_grad for p in teacher.parameters())))
        with torch.no_grad():
            soft = torch.sigmoid(teacher.predict(batch.images)["logits"].float())
        logits = net(batch.images)["logits"]
        distill = F.binary_cross_entropy_with_logits(logits.float(), soft)
        return {"cls": self.classification(logits, batch), "distill": Term(distill, "mean")}


def test_a_frozen_teacher_stays_out_of_training_and_checkpoints_reference_it(shards, tmp_path, monkeypatch):
    args = base_args(shards, tmp_path) + ["--train.epochs=1"]
    train.main([*args, "--train.name=teacher"])
    monkeypatch.setitem(RECIPE_CONFIGS, "distill", DistillConfig)
    monkeypatch.setitem(RECIPES, "distill", Distill)
    teacher = tmp_path / "teacher" / "best.pt"
    Distill.seen.clear()
    train.main([*args, "--train.name=student", "--recipe.name=distill", f"--recipe.teacher={teacher}"])
    assert Distill.seen and all(s == (False, False) for s in Distill.seen)  # eval mode, no gradients
    last = torch.load(tmp_path / "student" / "last.pt", weights_only=False)
    assert last["teachers"]["teacher"]["path"] == str(teacher.resolve())
    assert len(last["teachers"]["teacher"]["sha256"]) == 64
    teacher_last = torch.load(tmp_path / "teacher" / "last.pt", weights_only=False)
    # the teacher's weights are in no part of the student's state: same keys as a plain run's
    ema_keys = {k.removeprefix("module.") for k in last["ema"]}  # ModelEmaV3 keeps the copy as .module
    assert set(last["model"]) == ema_keys == set(teacher_last["model"])

    def optimised(ckpt):
        return sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])

    assert optimised(last) == optimised(teacher_last)
    rows = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_distill" in r for r in rows if r["kind"] == "train")
    # a teacher file that changed since the run started stops the resume, naming it
    changed = torch.load(teacher, weights_only=False)
    name = next(iter(changed["model"]))
    changed["model"][name] = changed["model"][name] + 1
    torch.save(changed, teacher)
    with pytest.raises(ValueError, match=r"teacher 'teacher' \(.*best.pt\) is not the file"):
        train.main(["--resume", str(tmp_path / "student")])


# --------------------------------------------------------------------------- the README's example


def readme_recipe() -> dict[str, str]:
    """The README's "Writing a recipe" example: file name -> its text (one block, a comment naming each
    file before its code)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("# fastmlic/recipes/l2feat_config.py")
    block = text[start : text.index("```", start)]
    second = block.index("# fastmlic/recipes/l2feat.py")
    return {"l2feat_config.py": block[:second], "l2feat.py": block[second:]}


@pytest.fixture
def dropped_in(tmp_path, monkeypatch):
    """A folder on the recipes package's path, as if its files lay in fastmlic/recipes/; whatever it
    registered is gone afterwards."""
    import fastmlic.recipes

    folder = tmp_path / "dropped_in"
    folder.mkdir()
    monkeypatch.setattr(fastmlic.recipes, "__path__", [*fastmlic.recipes.__path__, str(folder)])
    before = {id(r): set(dict.keys(r)) for r in (RECIPE_CONFIGS, RECIPES, HEADS)}
    yield folder
    for registry in (RECIPE_CONFIGS, RECIPES, HEADS):
        for name in set(dict.keys(registry)) - before[id(registry)]:
            dict.pop(registry, name)
    for name in [m for m in sys.modules if m.startswith("fastmlic.recipes.l2feat")]:
        del sys.modules[name]


def test_the_readme_example_is_two_files_that_train_with_no_other_edit(shards, tmp_path, dropped_in):
    for name, code in readme_recipe().items():
        (dropped_in / name).write_text(code)
    summary = train.main([*base_args(shards, tmp_path), "--train.name=l2", "--recipe.name=l2feat",
                          "--recipe.weight=0.01", "--train.epochs=1"])  # fmt: skip
    assert "--recipe.weight=0.001" in describe()  # found by its files: listed by --help too
    rows = [json.loads(x) for x in (tmp_path / "l2" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + 0.01 * r["loss_l2"], rel=1e-5) for r in steps)
    assert summary["epochs"] == 1


def test_a_recipe_installed_by_another_package_is_found_by_its_entry_point(shards, tmp_path):
    """The same two files in a package of their own, declared in the `fastmlic.recipes` entry-point group
    (the metadata an install writes), train in a fresh process that knows nothing else of them."""
    site = tmp_path / "site"
    package = site / "l2feat_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, code in readme_recipe().items():  # as another package writes it: absolute imports
        code = code.replace("from ..config import", "from fastmlic.config import")
        (package / name).write_text(code.replace("from .base import", "from fastmlic.recipes.base import"))
    dist_info = site / "l2feat_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: l2feat-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[fastmlic.recipes]\nl2feat = l2feat_plugin.l2feat\n")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    args = [*base_args(shards, tmp_path)[2:], "--train.name=plugin", "--recipe.name=l2feat",
            "--train.epochs=1"]
    done = subprocess.run([sys.executable, str(ROOT / "fastmlic" / "train.py"), "--cfg", "digits", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "plugin" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("loss_l2" in r for r in rows if r["kind"] == "train")


@pytest.mark.slow
def test_the_recipes_benchmark_checks_every_row_and_trains_one_of_each_kind_in_quick_mode():
    """Every row's config loads as its run would load it (--dry-run). One row of each kind trains: from
    random init (MulCon's stage one), continuing another row's run (stage two), reading class-name
    embeddings, and a pipeline (CPSD, the longest, listed first so it runs beside the others). Each
    recipe's own training is tested in its own file."""
    command = [sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--quick"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    checked = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert [line.split(":")[0] for line in checked.stdout.splitlines()[:-1]] == [
        "standard/linear", "standard/label_attention", "mulcon-stage1", "mulcon-stage2", "coco",
        "coco/no-contrastive", "sgre", "sgre/random-embeddings", "cpsd", "oass", "oass/max",
        "oass/no-cuts"]  # fmt: skip
    typo = subprocess.run([*command, "--dry-run", "--rows", "oass", "--recipe.alpha_sss=1"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert typo.returncode == 2 and "row oass: unknown config key 'recipe.alpha_sss'" in typo.stderr
    kinds = "cpsd,mulcon-stage1,mulcon-stage2,sgre/random-embeddings"
    result = subprocess.run([*command, "--rows", kinds], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["row", *kinds.split(",")]


@pytest.mark.parametrize("head, recipe, key", [
    ("linear", "standard", "embed_dim=256"), ("semantic", "sgre", "drop_rate=0.2"),
    ("csi", "oass", "heads=2"), ("mulcon", "mulcon", "drop_rate=0.1")])  # fmt: skip
def test_a_head_refuses_a_key_it_would_ignore(head, recipe, key):
    cfg = load_config("digits", [f"--model.head={head}", f"--recipe.name={recipe}", f"--model.{key}"])
    with pytest.raises(ConfigError, match=rf"model.{key}: model.head={head} does not use it .*leave it out"):
        check_recipe(cfg)
    check_recipe(load_config("digits", [f"--model.head={head}", f"--recipe.name={recipe}"]))  # defaults pass
