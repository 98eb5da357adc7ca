"""CoCo (recipes/coco.py): the contrastive co-occurrence term against the official per-image loop, the
gated graph network against the official update, the head on a CNN and a ViT, the views without
gradient, the config rules, and end to end on digits with EMA-only model selection."""

from __future__ import annotations

import json

import pytest
import rawdata
import torch
import torch.nn.functional as F
from conftest import assert_close

from fastmlic import train
from fastmlic.builder import build_recipe, check_recipe
from fastmlic.config import ConfigError, ModelConfig, load_config
from fastmlic.data import Batch
from fastmlic.models import build_model
from fastmlic.recipes.base import StepContext
from fastmlic.recipes.coco import CooccurrenceHead, GatedGraph, cooccurrence_contrastive_loss

# --------------------------------------------------------------------------- the term


def official_loop(ax, px, nx, y, tau):
    """models/mlic.py MLIC.forward's contrastive loop, transcribed (CPU, any dtype); an image without
    present labels adds 0 (the original would fail on it: its mean over no rows is NaN)."""
    ctr = 0.0
    for i in range(ax.shape[0]):
        p_ax, p_px, p_nx = ax[i][y[i] == 1, :], px[i][y[i] == 1, :], nx[i][y[i] == 1, :]
        n = p_ax.shape[0]
        if n == 0:
            continue
        app = (torch.sum(p_ax * p_px, dim=-1) / tau).unsqueeze(-1)
        anp = (torch.sum(p_ax * p_nx, dim=-1) / tau).unsqueeze(-1)
        aap = torch.mm(p_ax, p_ax.transpose(0, 1)) / tau
        aap = aap.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)  # drop the diagonal
        logits = torch.cat([app, anp, aap], dim=-1)
        ctr = ctr + F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    return ctr / ax.shape[0]


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_the_contrastive_term_equals_the_official_per_image_loop(rng, tau):
    b, labels, d = 6, 5, 8
    ax = torch.from_numpy(rng.normal(size=(b, labels, d))).requires_grad_()
    px, nx = (torch.from_numpy(rng.normal(size=(b, labels, d))) for _ in range(2))
    y = torch.from_numpy(rng.random((b, labels)) < 0.5).double()
    y[0] = 0  # no present label: adds 0
    y[1] = torch.tensor([0, 0, 1, 0, 0])  # one present label: only the two views in its row
    y[2] = 1  # every label present
    expected = official_loop(ax, px, nx, y, tau)
    actual = cooccurrence_contrastive_loss(ax, px, nx, y, tau)
    assert actual.dtype == torch.float32
    assert_close(actual, expected, torch.float32, "loss")
    (g_actual,) = torch.autograd.grad(actual, ax)
    (g_expected,) = torch.autograd.grad(expected, ax)
    assert_close(g_actual, g_expected, torch.float32, "gradient")
    # the images without labels really add 0: dropping them changes only the batch divisor
    rest = cooccurrence_contrastive_loss(ax[1:], px[1:], nx[1:], y[1:], tau)
    torch.testing.assert_close(rest * (b - 1) / b, actual)


def test_a_batch_without_any_present_label_gives_zero_not_nan():
    ax = torch.randn(3, 4, 6, requires_grad=True)
    loss = cooccurrence_contrastive_loss(ax, torch.randn(3, 4, 6), torch.randn(3, 4, 6), torch.zeros(3, 4))
    loss.backward()
    assert loss.item() == 0 and torch.all(ax.grad == 0)


# --------------------------------------------------------------------------- the head


def official_update(g: GatedGraph, x, h):
    """models/utils.py GatedGNN.update, with the six matrices cut out of our fused ones."""
    w1, w2, w3 = g.message.weight.chunk(3)
    u1, u2 = g.state.weight.chunk(2)
    u3 = g.reset_state.weight
    t1 = torch.sigmoid(x @ w1.T + h @ u1.T)
    t2 = torch.sigmoid(x @ w2.T + h @ u2.T)
    t3 = torch.tanh(x @ w3.T + (t2 * h) @ u3.T)
    return (1 - t1) * h + t1 * t3


def test_the_gated_graph_network_runs_the_official_update_num_steps_times():
    torch.manual_seed(0)
    g = GatedGraph(dim=6, steps=3).double()
    h0 = torch.randn(2, 4, 6, dtype=torch.float64)
    adjacency = torch.rand(2, 4, 4, dtype=torch.float64)
    h = h0
    for _ in range(3):
        h = official_update(g, torch.bmm(adjacency, h), h)
    torch.testing.assert_close(g(h0, adjacency), h)
    # each fused block starts as its own Linear(6, 6) would: kaiming-uniform with fan-in 6
    assert all(block.abs().max() <= 6**-0.5 for block in g.message.weight.chunk(3))


@pytest.mark.parametrize("backbone,size", [("test_resnet", 64), ("test_vit", 160)])
def test_the_cooccurrence_head_on_cnn_and_vit_backbones(backbone, size):
    model = build_model(ModelConfig(backbone=backbone, head="cooccurrence", embed_dim=0, heads=4), 7)
    width = model.backbone.num_features
    images = torch.randn(3, 3, size, size).to(memory_format=torch.channels_last)
    out = model(images)
    assert out["logits"].shape == (3, 7)
    assert out["label_features"].shape == out["graph_features"].shape == (3, 7, width)
    w = out["cooccurrence"]
    assert w.shape == (3, 7, 7) and torch.all((w > 0) & (w < 1))  # one predicted graph per image
    assert isinstance(model.head.input, torch.nn.Identity)  # embed_dim 0: the backbone's width
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    # the transformer's names say what they do: 2 layers over the tokens, 1 over the label queries
    assert len(model.head.transformer.encoder.layers) == 2 and len(model.head.transformer.decoder.layers) == 1
    projected = build_model(ModelConfig(backbone=backbone, head="cooccurrence", embed_dim=16, heads=4), 7)
    assert projected(images)["label_features"].shape == (3, 7, 16)


def test_the_per_class_rows_follow_the_classes():
    head = CooccurrenceHead(num_features=16, num_classes=5, heads=2)
    state = head.state_dict()
    assert all(state[name].shape[0] == 5 for name in head.per_class)
    assert head.class_weight.shape == (5, 32)  # one row per label over [x, ax]


# --------------------------------------------------------------------------- the recipe


def _recipe(*overrides):
    cfg = load_config("coco_digits", ["--model.backbone=test_resnet", "--model.heads=2",
                                      "--model.embed_dim=16", "--recipe.dropout=0", *overrides])  # fmt: skip
    torch.manual_seed(0)
    recipe = build_recipe(cfg, [f"c{i}" for i in range(4)])
    return recipe, recipe.build_module()


def test_the_views_have_no_gradient_and_see_only_their_half_of_the_graph():
    recipe, module = _recipe()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]]).float()
    out = module(images, targets)
    assert not out["positive_view"].requires_grad and not out["negative_view"].requires_grad
    assert out["graph_features"].requires_grad
    x, w, graph = out["label_features"], out["cooccurrence"], module.model.head.graph
    edges = targets.unsqueeze(-1) * targets.unsqueeze(1)
    torch.testing.assert_close(out["positive_view"], graph(x, w * edges))
    torch.testing.assert_close(out["negative_view"], graph(x, w * (1 - edges)))
    torch.testing.assert_close(out["negative_view"][1], graph(x, w)[1])  # no labels: every edge negative

    ctx = StepContext(step=0, epoch=0, total_steps=1, device=torch.device("cpu"), amp="off", rank=0,
                      world_size=1)  # fmt: skip
    terms = recipe.training_step(module, Batch([images], targets, None, ["a", "b", "c"]), ctx)
    assert (terms["contrastive"].reduction, terms["contrastive"].weight) == ("mean", 1.0)
    assert terms["cls"].reduction == "mean"  # ASL in the Query2Label normalisation
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(terms["contrastive"].value, params, allow_unused=True)
    assert sum(g is not None for g in grads) > 20  # the term reaches the backbone, head and graph


def test_weight_zero_trains_the_classification_alone():
    recipe, module = _recipe("--recipe.weight=0")
    calls = []
    net = lambda *args: calls.append(len(args)) or module(*args)  # noqa: E731
    ctx = StepContext(step=0, epoch=0, total_steps=1, device=torch.device("cpu"), amp="off", rank=0,
                      world_size=1)  # fmt: skip
    batch = Batch([torch.randn(2, 3, 32, 32)], torch.ones(2, 4), None, ["a", "b"])
    terms = recipe.training_step(net, batch, ctx)
    assert list(terms) == ["cls"] and calls == [1]  # no targets passed: no views computed


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--recipe.num_steps=0"], r"recipe.num_steps=0 must be at least 1"),
        (["--recipe.decoder_layers=0"], r"recipe.decoder_layers=0 must be at least 1"),
        (["--recipe.temperature=0"], r"recipe.temperature=0.0 must be positive"),
        (["--model.head=linear"], r"model.head=linear does not give"),
        (["--train.select_from=ema", "--ema.enabled=false"], r"train.select_from=ema needs ema.enabled"),
        (["--model.embed_dim=-1"], r"model.embed_dim=-1 must be 0 \(the backbone's width\) or more"),
    ],
)
def test_bad_settings_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("coco_digits", overrides))


def test_the_presets_carry_the_official_readme_settings():
    expected = {  # dataset: (batch, pct_start, EMA decay, gamma_neg, num_steps, image size)
        "voc2007": (32, 0.4, 0.9994, 0.0, 2, 448),
        "mscoco": (128, 0.4, 0.9997, 1.0, 1, 448),
        "nuswide": (128, 0.4, 0.9997, 1.0, 4, 448),
        "vg500": (128, 0.2, 0.9997, 2.0, 2, 512),
    }
    for dataset, values in expected.items():
        cfg = load_config(f"coco_{dataset}")
        got = (cfg.data.batch_size, cfg.optim.pct_start, cfg.ema.decay, cfg.loss.gamma_neg,
               cfg.recipe.num_steps, cfg.data.image_size)  # fmt: skip
        assert got == values, dataset
        assert cfg.data.dataset == dataset and cfg.model.head == "cooccurrence" and cfg.model.embed_dim == 0
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == (
            "adamw", 1e-4, 1e-4, "onecycle")
        assert (cfg.loss.gamma_pos, cfg.loss.clip, cfg.loss.eps, cfg.loss.reduction, cfg.loss.scale) == (
            0.0, 0.0, 1e-5, "mean", 1000.0)
        assert (cfg.train.epochs, cfg.train.patience, cfg.train.select_from) == (80, 0, "ema")  # no --estop
        assert (cfg.recipe.encoder_layers, cfg.recipe.decoder_layers, cfg.model.heads) == (2, 1, 8)
        assert cfg.train.sync_bn  # train.py converts to SyncBatchNorm under DDP, always
        assert cfg.loss.use_ignore == (dataset != "voc2007")  # scripts/voc2007.py: difficult-only = 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("coco"), 128, 64, 32)


def test_end_to_end_on_digits_with_best_weights_chosen_by_the_ema(shards, tmp_path):
    summary = train.main(["--cfg", "coco_digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
                          "--data.image_size=32", "--data.workers=0", "--data.backend=torch",
                          "--model.embed_dim=32", "--recipe.feedforward=64", "--train.epochs=2",
                          "--train.log_every=1"])  # fmt: skip
    run = tmp_path / "coco_digits"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 2 * 128 // 64
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + r["loss_contrastive"], rel=1e-5) for r in steps)
    assert all(r["loss_contrastive"] > 0 for r in steps)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert summary["epochs"] == 2 and summary["best"]["source"] == "ema"
    assert summary["best"]["mAP"] == pytest.approx(max(r["ema_mAP"] for r in epochs))
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["source"] == "ema" and best["config"]["recipe"]["num_steps"] == 2
