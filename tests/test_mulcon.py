"""MulCon (recipes/mulcon.py): the head as the official code builds it, the contrastive term against
a literal loop, the two-view step, the stage rules, and both stages end to end on digits."""

from __future__ import annotations

import json
import math

import pytest
import rawdata
import torch
import torch.nn.functional as F
import yaml
from conftest import assert_close

from fastmlic import train
from fastmlic.builder import build_recipe, check_recipe
from fastmlic.config import ConfigError, ModelConfig, load_config
from fastmlic.data import Batch
from fastmlic.models import build_model
from fastmlic.recipes import mulcon as mulcon_module
from fastmlic.recipes.base import StepContext
from fastmlic.recipes.mulcon import MAB, label_contrastive_loss

# --------------------------------------------------------------------------- the term


def literal_label_contrastive(z, targets, temperature, ignore=None):
    """The loss written as the paper states it, one anchor at a time."""
    slots = [(b, c) for b in range(targets.shape[0]) for c in range(targets.shape[1])
             if targets[b, c] > 0.5 and (ignore is None or not ignore[b, c])]  # fmt: skip
    total = torch.zeros((), dtype=torch.float64)
    for i, (bi, ci) in enumerate(slots):
        others = [j for j in range(len(slots)) if j != i]
        logits = torch.stack([z[bi, ci] @ z[slots[j][0], slots[j][1]] / temperature for j in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        positives = [k for k, j in enumerate(others) if slots[j][1] == ci]
        if positives:
            total = total - log_prob[positives].mean()
    return total / len(slots)


def test_label_contrastive_loss_equals_a_literal_loop(rng):
    z = F.normalize(torch.from_numpy(rng.normal(size=(5, 4, 8))), dim=-1).requires_grad_()
    targets = torch.from_numpy(rng.random((5, 4)) < 0.5).double()
    targets[0, 0] = targets[1, 0] = 1  # at least one anchor with a positive
    ignore = torch.from_numpy(rng.random((5, 4)) < 0.2)
    ignore[0, 0] = ignore[1, 0] = False
    for mask in (None, ignore):
        expected = literal_label_contrastive(z, targets, 0.2, mask)
        actual = label_contrastive_loss(z, targets, 0.2, mask)
        assert_close(actual, expected, torch.float32, "loss")
        (g_actual,) = torch.autograd.grad(actual, z)
        (g_expected,) = torch.autograd.grad(expected, z)
        assert_close(g_actual, g_expected, torch.float32, "gradient")


# --------------------------------------------------------------------------- the head


def official_mab(mab: MAB, Q, K):
    """models/mab.py MABMultiLabel.forward, transcribed: heads concatenated along the batch."""
    Q = mab.fc_q(Q)
    K, V = mab.fc_k(K), mab.fc_v(K)
    dim_split = mab.dim // mab.heads
    Q_, K_, V_ = (torch.cat(t.split(dim_split, 2), 0) for t in (Q, K, V))
    A = torch.softmax(Q_.bmm(K_.transpose(1, 2)) / math.sqrt(mab.dim), 2)
    out = torch.cat((Q_ + A.bmm(V_)).split(Q.size(0), 0), 2)
    out = mab.ln0(out)
    out = out + F.relu(mab.fc_o(out))
    return mab.ln1(out), A


def test_the_attention_block_computes_what_the_official_one_does(rng):
    torch.manual_seed(0)
    mab = MAB(dim_q=12, dim_k=20, dim=16, heads=4).double()
    q = torch.from_numpy(rng.normal(size=(3, 5, 12)))
    k = torch.from_numpy(rng.normal(size=(3, 9, 20)))
    expected, attention = official_mab(mab, q, k)
    out, weights = mab(q, k, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mab(q, k)[0], expected)  # the fused path (no weights) agrees
    torch.testing.assert_close(weights, attention.view(4, 3, 5, 9).mean(0))  # heads were batch-major


@pytest.mark.parametrize("backbone,size", [("test_resnet", 64), ("test_vit", 160)])
def test_the_mulcon_head_on_cnn_and_vit_backbones(backbone, size):
    model = build_model(ModelConfig(backbone=backbone, head="mulcon", embed_dim=32, heads=4), 7)
    images = torch.randn(3, 3, size, size).to(memory_format=torch.channels_last)
    out = model(images, return_attention=True)
    h, w = out["grid"]
    assert out["logits"].shape == (3, 7) and out["label_features"].shape == (3, 7, 32)
    assert out["attention"].shape == (3, 7, h * w)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3, 7))
    (out["logits"].sum() + out["label_features"].sum()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    head = model.head
    assert head.class_weight.std().item() == pytest.approx(0.02, rel=0.3)  # the official N(0, 0.02)
    assert torch.all(head.class_bias == 0) and torch.all(head.mab.fc_q.bias == 0)


# --------------------------------------------------------------------------- the recipe


def test_stage_two_puts_both_views_through_one_forward_and_contrasts_their_present_labels(monkeypatch):
    cfg = load_config("digits", ["--model.backbone=test_resnet", "--model.head=mulcon",
                                 "--model.embed_dim=16", "--model.heads=2", "--recipe.name=mulcon",
                                 "--loss.name=bce", "--loss.reduction=mean"])  # fmt: skip
    recipe = build_recipe(cfg, [f"c{i}" for i in range(4)])
    module = recipe.build_module()
    seen = {}

    def spy(embeddings, targets, temperature, ignore):
        seen.update(embeddings=embeddings, targets=targets, ignore=ignore, temperature=temperature)
        return label_contrastive_loss(embeddings, targets, temperature, ignore)

    monkeypatch.setattr(mulcon_module, "label_contrastive_loss", spy)
    calls = []
    net = lambda images: calls.append(images) or module(images)  # noqa: E731
    v0, v1 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]]).float()
    ignore = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]).bool()
    ctx = StepContext(step=0, epoch=0, total_steps=1, device=torch.device("cpu"), amp="off", rank=0,
                      world_size=1)  # fmt: skip
    terms = recipe.training_step(net, Batch([v0, v1], targets, ignore, ["a", "b", "c"]), ctx)
    assert len(calls) == 1 and torch.equal(calls[0], torch.cat([v0, v1]))  # one forward of 2B images
    assert torch.equal(seen["targets"], torch.cat([targets, targets]))  # each view keeps its labels
    assert torch.equal(seen["ignore"], torch.cat([ignore, ignore]))
    assert seen["embeddings"].shape == (6, 4, 128) and seen["temperature"] == 0.2
    assert (terms["contrastive"].reduction, terms["contrastive"].weight) == ("global", 0.5)
    logits = module(torch.cat([v0, v1]))["logits"]  # same weights, same inputs: the same logits
    expected = F.binary_cross_entropy_with_logits(logits, torch.cat([targets, targets]), reduction="none")
    expected = expected[~torch.cat([ignore, ignore])].mean()  # BCE mean: summed and divided by the cells
    torch.testing.assert_close(terms["cls"].value, expected)
    assert recipe.data_request(cfg).views == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--recipe.stage=3"], r"recipe.stage=3 must be 1 or 2"),
        (["--recipe.init_ema=true"], r"recipe.init_ema needs recipe.stage=2 and train.init_from"),
        (["--recipe.stage=1", "--recipe.init_ema=true", "--train.init_from=x.pt"], r"needs recipe.stage=2"),
    ],
)
def test_stage_rules_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("mulcon_stage1_digits", ["--recipe.name=mulcon", *overrides]))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("mulcon"), 256, 96, 32)


def test_both_stages_end_to_end_on_digits(shards, tmp_path):
    # resnet10t: about half the step time here of the presets' resnet18
    tiny = [f"--data.shards={shards}", f"--train.out_dir={tmp_path}", "--data.image_size=32",
            "--data.workers=0", "--data.backend=torch", "--model.embed_dim=32", "--model.backbone=resnet10t",
            "--train.log_every=2"]  # fmt: skip
    alone = r"init_from=.*no such checkpoint; this recipe.s stages \(stage1, stage2\) run .*pipeline"
    with pytest.raises(FileNotFoundError, match=alone):
        train.main(["--cfg", "mulcon_stage2_digits", *tiny])  # stage two alone, before stage one
    assert not (tmp_path / "mulcon_stage2_digits").exists()
    one = train.main(["--cfg", "mulcon_stage1_digits", *tiny, "--train.epochs=2"])
    stage1 = tmp_path / "mulcon_stage1_digits"
    assert one["epochs"] == 2 and (stage1 / "last.pt").is_file()
    two = train.main(["--cfg", "mulcon_stage2_digits", *tiny, f"--train.init_from={stage1 / 'last.pt'}"])
    stage2 = tmp_path / "mulcon_stage2_digits"
    rows = [json.loads(x) for x in (stage2 / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert steps and all(r["loss"] == pytest.approx(r["loss_cls"] + 0.5 * r["loss_contrastive"], rel=1e-5)
                         for r in steps)  # fmt: skip
    log = (stage2 / "log.txt").read_text()
    assert "4 tensors not in the checkpoint keep their initialisation (projector." in log  # all else loaded
    assert two["epochs"] == 2 and two["best"]["mAP"] > 0
    # stage two starts from stage one's EMA weights: at lr 0 it still holds exactly those
    train.main(["--cfg", "mulcon_stage2_digits", *tiny, f"--train.init_from={stage1 / 'last.pt'}",
                "--train.name=lr0", "--optim.lr=0", "--train.epochs=1"])  # fmt: skip
    stage1_ema = torch.load(stage1 / "last.pt", weights_only=False)["ema"]
    held = torch.load(tmp_path / "lr0" / "last.pt", weights_only=False)["model"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics move at lr 0
    loaded = [k for k in held if not k.startswith("projector.") and not k.endswith(buffers)]
    assert len(loaded) > 20
    for name in loaded:
        assert torch.equal(held[name], stage1_ema[f"module.{name}"]), name
    with pytest.raises(ValueError, match=r"stage two needs stage one's classes; 7 classes only in the chec"):
        train.main(["--cfg", "mulcon_stage2_digits", *tiny, f"--train.init_from={stage1 / 'last.pt'}",
                    "--data.classes=[0, 1, 2]", "--train.name=other"])  # fmt: skip
    with pytest.raises(ValueError, match=r"recipe.init_ema asks for EMA weights"):
        train.main(["--cfg", "mulcon_stage2_digits", *tiny, f"--train.init_from={stage1 / 'best.pt'}",
                    "--train.name=noema"])  # fmt: skip


def test_the_pipeline_trains_stage_one_then_stage_two_from_its_last_checkpoint(shards, tmp_path, capsys):
    from fastmlic import pipeline

    first = tmp_path / "first.yaml"  # a stage one of one epoch: the user's own file on the preset
    first.write_text("base: mulcon_stage1_digits\ntrain:\n  epochs: 1\n")
    args = ["--cfg", "mulcon_stage2_digits", f"--recipe.first_stage={first}", f"--data.shards={shards}",
            f"--train.out_dir={tmp_path}", "--train.name=both", "--data.image_size=32", "--data.workers=0",
            "--data.backend=torch", "--model.embed_dim=32", "--model.backbone=resnet10t",
            "--train.epochs=1", "--optim.momentum=0.8"]  # fmt: skip
    done = pipeline.main(args)
    root = tmp_path / "both"
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    # stage one takes its optimiser from its own file: the one override it does not take is named
    assert notes == ["  note: stage stage1 does not take --optim.momentum=0.8 (it keeps optim.momentum=0.9): "
                     "its recipe sets them for this stage (from its own preset or file: see --help)"]
    assert done["ran"] == ["stage1", "stage2"] and set(done["stages"].values()) == {"done"}
    one = yaml.safe_load((root / "stage1" / "config.yaml").read_text())
    two = yaml.safe_load((root / "stage2" / "config.yaml").read_text())
    # stage one: its own file's recipe, optimiser and epochs; the command line's data and model
    assert (one["recipe"]["stage"], one["optim"]["name"], one["train"]["epochs"]) == (1, "adamw", 1)
    assert (two["recipe"]["stage"], two["optim"]["name"]) == (2, "sgd")
    for section, key in (("data", "shards"), ("data", "image_size"), ("model", "embed_dim"),
                         ("train", "seed")):  # fmt: skip
        assert one[section][key] == two[section][key], (section, key)
    assert two["train"]["init_from"] == str(root / "stage1" / "last.pt")
    log = (root / "stage2" / "log.txt").read_text()
    assert "4 tensors not in the checkpoint keep their initialisation (projector." in log  # all else loaded
    assert pipeline.main(args)["ran"] == []  # done: the same command again skips both
    (root / "stage1" / "last.pt").unlink()  # what stage two started from, deleted by hand
    status = pipeline.main([*args, "--status"])["stages"]
    assert status == {"stage1": "result gone", "stage2": "done"}
    again = pipeline.main(args)  # the finished run kept aside, stage one trained again
    assert again["ran"] == ["stage1"] and set(again["stages"].values()) == {"done"}
    assert (root / "stage1.result-gone" / "best.pt").is_file() and (root / "stage1" / "last.pt").is_file()


@pytest.mark.parametrize("preset, value, message", [
    ("mulcon_stage2_digits", "mulcon_stage2_digits", "is recipe mulcon stage 2; name a MulCon stage-one"),
    ("mulcon_stage2_digits", "digits", "is recipe standard; name a MulCon stage-one preset"),
    ("mulcon_stage2_digits", "mulcon_stage1_digitz", "first_stage='mulcon_stage1_digitz': config file"),
    ("mulcon_stage1_digits", "mulcon_stage1_digits", "is for recipe.stage=2"),
])  # fmt: skip
def test_a_wrong_first_stage_fails_when_the_config_loads(preset, value, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config(preset, [f"--recipe.first_stage={value}"]))


def test_a_first_stage_that_leads_back_to_itself_is_refused(tmp_path):
    loop = tmp_path / "loop.yaml"  # a stage two naming itself as its stage one
    loop.write_text(f"base: mulcon_stage2_digits\nrecipe:\n  first_stage: {loop}\n")
    with pytest.raises(ConfigError, match="is recipe mulcon stage 2; name a MulCon stage-one preset"):
        check_recipe(load_config(loop))


@pytest.mark.parametrize("stage, slow", [(1, {"backbone"}), (2, {"backbone", "attention"})])
def test_each_stage_puts_what_the_official_code_does_at_the_backbone_lr_factor(stage, slow):
    """Stage one: only the backbone at lr x lrp, the attention blocks and label queries at lr
    (coco_att_stage_one_model.py); stage two: backbone and attention at lr x lrp
    (coco_att_con_stage_two_model.py); classifiers and projector at lr in both."""
    from fastmlic.optim import build_optimizer

    small = ["--model.backbone=resnet10t", "--model.pretrained=false", "--model.embed_dim=32"]
    cfg = load_config(f"mulcon_stage{stage}_mscoco", small)
    module = build_recipe(cfg, [f"c{i}" for i in range(5)]).build_module()
    lr_of = {id(p): g["lr"] for g in build_optimizer(module, cfg.optim).param_groups for p in g["params"]}
    head = module.model.head
    parts = {
        "backbone": list(module.model.backbone.parameters()),
        "attention": [*head.pixels.parameters(), *head.mab.parameters(), *head.labels.parameters(),
                      head.queries],
        "classifier": [head.class_weight, head.class_bias],
        "projector": list(module.projector.parameters()) if module.projector is not None else [],
    }  # fmt: skip
    for part, params in parts.items():
        expected = cfg.optim.lr * (cfg.optim.backbone_lr_factor if part in slow else 1.0)
        assert all(lr_of[id(p)] == pytest.approx(expected) for p in params), part
    assert cfg.optim.backbone_lr_factor == 0.1


def test_the_pipeline_starts_stage_two_from_the_chosen_epochs_ema_with_stage_ones_augmentation(
    shards, tmp_path
):
    from fastmlic import pipeline

    first = tmp_path / "first.yaml"  # stage one of two epochs, cropping as the official stage one does
    first.write_text("base: mulcon_stage1_digits\ndata:\n  resize: random_resized_crop\n"
                     "  crop_scale: [0.875, 1.0]\ntrain:\n  epochs: 2\n")  # fmt: skip
    # stage two at lr 0: its weights stay those it started from
    pipeline.main(["--cfg", "mulcon_stage2_digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
                   "--train.name=both", "--data.image_size=32", "--data.workers=0", "--data.backend=torch",
                   "--model.embed_dim=32", "--model.backbone=resnet10t", "--train.epochs=1", "--optim.lr=0",
                   f"--recipe.first_stage={first}", "--recipe.first_stage_epoch=1"])  # fmt: skip
    root = tmp_path / "both"
    one = yaml.safe_load((root / "stage1" / "config.yaml").read_text())
    two = yaml.safe_load((root / "stage2" / "config.yaml").read_text())
    assert (one["data"]["resize"], one["data"]["crop_scale"]) == ("random_resized_crop", [0.875, 1.0])
    assert two["data"]["resize"] == "squash" and one["optim"]["lr"] > 0
    assert one["train"]["keep_epochs"] == [1]
    kept = root / "stage1" / "epochs" / "epoch-001.pt"
    assert two["train"]["init_from"] == str(kept)
    epoch1 = torch.load(kept, weights_only=False)
    last = torch.load(root / "stage1" / "last.pt", weights_only=False)
    assert epoch1["state"]["epoch"] == 1 and last["state"]["epoch"] == 2  # kept past the rotation
    after = torch.load(root / "stage2" / "last.pt", weights_only=False)["model"]
    name = "model.head.class_weight"
    assert torch.equal(after[name], epoch1["ema"][f"module.{name}"])
    assert not torch.equal(after[name], last["ema"][f"module.{name}"])


def test_a_first_stage_epoch_beyond_stage_one_is_refused():
    with pytest.raises(ConfigError, match="first_stage_epoch=30: mulcon_stage1_mscoco trains 25 epochs"):
        check_recipe(load_config("mulcon_stage2_mscoco", ["--recipe.first_stage_epoch=30"]))
