"""OASS (recipes/oass.py) against the released code (Akimoto-Cris/OASSMLL @ 19b22d2): every public
function beside a literal transcription of the official loops (numpy, skimage, one class and one cut at
a time), on hand-made cases; the batched pieces' BatchNorm against one forward per cut; the EMA
teacher; which parts get gradients; the presets; end to end on digits."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import rawdata
import torch
import torch.nn.functional as F
from torch import nn

from fastmlic import train
from fastmlic.builder import build_recipe, check_recipe
from fastmlic.config import ConfigError, load_config
from fastmlic.data import Batch
from fastmlic.recipes.base import StepContext
from fastmlic.recipes.oass import (
    csi_logits,
    cut_at,
    ema_update,
    ghost_batchnorm,
    keypoints,
    merge_cuts,
    piece_class_loss,
    reconstruction_loss,
)

# --------------------------------------------------------------------------- the official loops, literally


def official_make_cam(x, epsilon=1e-5):  # tools/ai/torch_utils.py:48-57
    x = F.relu(x)
    b, c, h, w = x.size()
    flat_x = x.view(b, c, (h * w))
    max_value = flat_x.max(axis=-1)[0].view((b, c, 1, 1))
    return F.relu(x - epsilon) / (max_value + epsilon)


def upsample(cam: np.ndarray, size) -> np.ndarray:
    """cv2.resize(cam, (W, H), INTER_LINEAR), which F.interpolate(bilinear) equals to an ulp."""
    return F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear",
                         align_corners=False)[0, 0].numpy()  # fmt: skip


def official_max(features, labels, size):  # max.py:262-287
    cams_1 = official_make_cam(features) * labels.unsqueeze(2).unsqueeze(3)
    obj_cams = cams_1.max(dim=1)[0]
    points = []
    for m in range(len(obj_cams)):
        cam_np = upsample(obj_cams[m].numpy(), size)
        max_index = np.unravel_index(np.argmax(cam_np), cam_np.shape)
        if max_index[0] == 0 or max_index[1] == 0:
            max_index = [size[0] // 2, size[1] // 2]
        points.append([(-1, int(max_index[0]), int(max_index[1]))])
    return points


def official_per_class(features, labels, size, centre_of):
    """cMax.py:285-308, cTopk.py:296-357, cTopk_w.py:294-348: one key point per present class."""
    cams_np = official_make_cam(features).numpy()
    points = []
    for m in range(len(cams_np)):
        image = []
        for n in range(len(cams_np[0])):
            if labels[m][n] == 1:
                image.append((n, *centre_of(upsample(cams_np[m][n], size), size)))
        points.append(image)
    return points


def official_cmax(cam_np, size):
    max_index = np.unravel_index(np.argmax(cam_np), cam_np.shape)
    if max_index[0] == 0 or max_index[1] == 0:
        return [size[0] // 2, size[1] // 2]
    return [int(v) for v in max_index]


def official_ctopk(cam_np, size, k=5):
    from skimage.feature import peak_local_max

    max_list = []
    local_max_coordinates = peak_local_max(cam_np, min_distance=20)
    if len(local_max_coordinates) == 0:
        return [size[0] // 2, size[1] // 2]
    for q in range(len(local_max_coordinates)):
        max_list.append(cam_np[local_max_coordinates[q][0]][local_max_coordinates[q][1]])
    index = np.argsort(-np.array(max_list), kind="stable")
    coor_0 = coor_1 = num = 0
    max_index = np.unravel_index(np.argmax(cam_np), cam_np.shape)
    if len(max_list) <= k:
        for l_ in range(len(max_list)):
            if math.pow(local_max_coordinates[index[l_]][0] - max_index[0], 2) + math.pow(
                    local_max_coordinates[index[l_]][1] - max_index[1], 2) < math.pow(128, 2):
                coor_0 += local_max_coordinates[index[l_]][0]
                coor_1 += local_max_coordinates[index[l_]][1]
                num += 1
    else:
        for l_ in range(k):
            if math.pow(local_max_coordinates[index[l_]][0] - max_index[0], 2) + math.pow(
                    local_max_coordinates[index[l_]][0] - max_index[1], 2) < math.pow(128, 2):  # the typo
                coor_0 += local_max_coordinates[index[l_]][0]
                coor_1 += local_max_coordinates[index[l_]][1]
                num += 1
    if num == 0:
        return [size[0] // 2, size[1] // 2]
    coor_0, coor_1 = coor_0 // num, coor_1 // num
    return [size[0] // 2, size[1] // 2] if coor_1 == 0 or coor_0 == 0 else [int(coor_0), int(coor_1)]


def official_ctopk_w(cam_np, size, k=5):
    from skimage.feature import peak_local_max

    max_list = []
    local_max_coordinates = peak_local_max(cam_np, min_distance=20)
    if len(local_max_coordinates) == 0:
        return [size[0] // 2, size[1] // 2]
    for q in range(len(local_max_coordinates)):
        max_list.append(float(cam_np[local_max_coordinates[q][0]][local_max_coordinates[q][1]]))
    index = np.argsort(-np.array(max_list), kind="stable")
    coor_0 = coor_1 = 0
    if len(max_list) <= k:
        total = 0
        for z in range(len(max_list)):
            total += max_list[z]
        for l_ in range(len(max_list)):
            coor_0 += int(int(local_max_coordinates[index[l_]][0]) * max_list[index[l_]] / total)
            coor_1 += int(int(local_max_coordinates[index[l_]][1]) * max_list[index[l_]] / total)
    else:
        total = 0
        for z in range(k):
            total += max_list[index[z]]
        for l_ in range(k):
            coor_0 += int(int(local_max_coordinates[index[l_]][0]) * max_list[index[l_]] / total)
            coor_1 += int(int(local_max_coordinates[index[l_]][1]) * max_list[index[l_]] / total)
    return [size[0] // 2, size[1] // 2] if coor_1 == 0 or coor_0 == 0 else [coor_0, coor_1]


OFFICIAL = {"cmax": official_cmax, "ctopk": official_ctopk, "ctopk_w": official_ctopk_w}


def bumps(shape, centres, heights, width=1.5):
    """A [h, w] map of Gaussian bumps at grid cells `centres` (row, col) with `heights`."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.float32)
    for (r, c), a in zip(centres, heights, strict=True):
        out += a * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * width**2)).astype(np.float32)
    return out


@pytest.fixture
def cams():
    """Raw CAMs [2, 4, 16, 16] with the cases the rules turn on: class 0 of image 0 has seven peaks (more
    than k, so the ctopk typo applies; one of them it drops) and a tie; class 1 is flat (no peak); class
    2 peaks in row 0; class 3 is absent from image 0 but holds the highest peak; image 1 has two classes
    and an odd spread."""
    maps = np.zeros((2, 4, 16, 16), np.float32)
    # the maximum off the diagonal, so the typo's (py - mx) differs from (px - mx), and the peak at (2, 9)
    # within 128 px of it only by the true distance; equal heights at (6, 5) and (13, 9)
    maps[0, 0] = bumps((16, 16), [(3, 12), (2, 9), (6, 5), (9, 12), (10, 4), (13, 9), (13, 2)],
                       [2.2, 2.0, 1.5, 1.2, 1.9, 1.5, 0.6], width=0.7)  # fmt: skip
    maps[0, 1] = 0.25  # flat
    maps[0, 2] = bumps((16, 16), [(0, 7), (9, 9)], [3.0, 1.0])
    maps[0, 3] = bumps((16, 16), [(13, 2)], [9.0])  # absent class: the largest value of the image
    maps[1, 0] = bumps((16, 16), [(4, 11), (11, 4)], [1.0, 0.9], width=2.5) - 0.3
    maps[1, 2] = bumps((16, 16), [(7, 7), (2, 13), (14, 1)], [1.0, 0.95, 0.94], width=1.0)
    labels = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0]], dtype=torch.float32)
    return torch.from_numpy(maps), labels


# --------------------------------------------------------------------------- key points


@pytest.mark.parametrize("size", [(256, 256), (250, 230)])  # odd image sizes: a grid that is no image / 16
def test_keypoints_equal_the_official_loops(cams, size):
    features, labels = cams
    assert keypoints(features, labels, "max", image_size=size) == official_max(features, labels, size)
    for strategy, centre_of in OFFICIAL.items():
        expected = official_per_class(features, labels, size, centre_of)
        assert keypoints(features, labels, strategy, k=5, image_size=size) == expected, strategy


def test_the_keypoint_rules_on_the_hand_made_cases(cams):
    features, labels = cams
    size = (256, 256)
    points = {s: keypoints(features, labels, s, image_size=size) for s in ("max", "cmax", "ctopk", "ctopk_w")}
    # max ignores the absent class 3 although it holds the image's highest value
    assert points["max"][0][0][0] == -1 and points["max"][0][0][1:] != (13 * 16 + 8, 2 * 16 + 8)
    assert [c for c, _, _ in points["cmax"][0]] == [0, 1, 2]  # present classes, ascending; 3 left out
    assert points["cmax"][0][1][1:] == (128, 128)  # the flat class: the image's centre
    assert points["cmax"][0][2][1:] == (128, 128)  # class 2 peaks in row 0: the centre
    assert points["ctopk"][0][1][1:] == (128, 128)  # no local maximum at all
    assert all(len(image) == int(labels[b].sum()) for b, image in enumerate(points["ctopk_w"]))
    # k larger than the number of peaks uses them all; the official default is 5
    assert keypoints(features, labels, "ctopk", k=50, image_size=size) == official_per_class(
        features, labels, size, lambda cam, s: official_ctopk(cam, s, k=50))
    assert keypoints(features, torch.zeros_like(labels), "cmax") == [[], []]  # no label, no cut


def test_the_ctopk_radius_typo_is_kept_and_can_be_fixed(cams):
    features, labels = cams
    kept = keypoints(features, labels, "ctopk", image_size=(256, 256))
    fixed = keypoints(features, labels, "ctopk", image_size=(256, 256), radius_typo=False)
    assert kept[0][0] != fixed[0][0]  # seven peaks > k: the branch with the typo, which this case trips
    assert kept[1] == fixed[1]  # two or three peaks <= k: the branch without it


# --------------------------------------------------------------------------- cuts


def test_cut_and_merge_equal_the_official_code():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 512, 512, generator=g)
    for point in [(100, 300), (1, 511), (511, 1), (256, 256)]:
        y, x = point
        pieces = [image[:, :y, :x], image[:, :y, x:], image[:, y:, :x], image[:, y:, x:]]  # cMax.py:331-356
        expected = torch.cat([F.interpolate(p.unsqueeze(0), size=[256, 256], mode="nearest") for p in pieces])
        assert torch.equal(cut_at(image, point), expected)
        cams = torch.randn(4, 20, 16, 16, generator=g)
        my, mx = max(1, y // 16), max(1, x // 16)  # cMax.py:366-373
        parts = [F.interpolate(cams[i : i + 1], size=s, mode="nearest") for i, s in
                 enumerate([(my, mx), (my, 32 - mx), (32 - my, mx), (32 - my, 32 - mx)])]  # fmt: skip
        expected = torch.cat([torch.cat(parts[:2], 3), torch.cat(parts[2:], 3)], 2)[0]
        assert torch.equal(merge_cuts(cams, point, (32, 32)), expected)
    with pytest.raises(ValueError, match="must lie inside"):
        merge_cuts(torch.randn(4, 2, 8, 8), (600, 10), (32, 32))


# --------------------------------------------------------------------------- the class-specific instances


class OfficialCSI(nn.Module):
    """core/networks.py:71-85 for C classes and D channels, literally (a loop over classes)."""

    def __init__(self, d, c):
        super().__init__()
        self.BN = nn.ModuleList([nn.BatchNorm2d(d) for _ in range(c)])
        self.stage6 = nn.ModuleList([nn.Conv2d(d, 1, 1, bias=False) for _ in range(c)])

    def forward(self, x, features):
        cams = official_make_cam(features)
        maps = []
        for v in range(cams.shape[1]):
            x_mask = x * cams[:, v].unsqueeze(1).repeat(1, x.shape[1], 1, 1)
            maps.append(self.stage6[v](self.BN[v](x_mask)))
        return torch.mean(torch.cat(maps, 1).flatten(2), -1)


def test_csi_logits_equal_the_official_loop_in_training_and_evaluation():
    torch.manual_seed(0)
    d, c = 6, 3
    official = OfficialCSI(d, c).double()
    for bn in official.BN:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.relu(torch.randn(4, d, 5, 7, dtype=torch.float64)).requires_grad_()
    features = torch.randn(4, c, 5, 7, dtype=torch.float64).requires_grad_()
    params = dict(bn_weight=torch.stack([b.weight for b in official.BN]),
                  bn_bias=torch.stack([b.bias for b in official.BN]),
                  conv_weight=torch.stack([s.weight.flatten() for s in official.stage6]))  # fmt: skip
    expected = official(x, features)
    actual = csi_logits(x, features, **params)
    # our statistics accumulate in fp32 (two matmuls instead of C masked copies of the map)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-4, atol=1e-5)
    gx, gf = torch.autograd.grad(actual.sum(), [x, features])
    ex, ef = torch.autograd.grad(expected.sum(), [x, features])  # make_cam is not detached: both get one
    torch.testing.assert_close(gx.float(), ex.float(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(gf.float(), ef.float(), rtol=1e-3, atol=1e-5)
    official.eval()
    for bn in official.BN:
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    running = dict(running_mean=torch.stack([b.running_mean for b in official.BN]),
                   running_var=torch.stack([b.running_var for b in official.BN]))  # fmt: skip
    torch.testing.assert_close(csi_logits(x, features, **params, **running, training=False).float(),
                               official(x, features).float(), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_the_csi_head_moves_its_running_statistics_as_the_official_batchnorms():
    torch.manual_seed(1)
    cfg = load_config("oass_digits", ["--model.backbone=resnet18"])
    head = build_recipe(cfg, ["a", "b"]).build_module().model.head
    official = OfficialCSI(head.bn_weight.shape[1], 2)
    x, features = torch.relu(torch.randn(3, head.bn_weight.shape[1], 4, 4)), torch.randn(3, 2, 4, 4)
    head.train().logits(x, features)
    official.train()(x, features)
    torch.testing.assert_close(head.running_mean, torch.stack([b.running_mean for b in official.BN]))
    torch.testing.assert_close(head.running_var, torch.stack([b.running_var for b in official.BN]))


# --------------------------------------------------------------------------- losses and the teacher


def test_the_losses_equal_the_official_loop(cams):
    features, labels = cams

    def gap(x):
        return x.mean((1, 2))[None]

    g = torch.Generator().manual_seed(2)
    for strategy in ("max", "cmax"):
        points = keypoints(features, labels, strategy, image_size=(256, 256))
        n = sum(len(p) for p in points)
        merged = torch.randn(n, 4, 16, 16, generator=g)
        pcl = re = 0
        i = 0
        for b, image in enumerate(points):  # cMax.py:396-406, max.py:373-390
            for c, _, _ in image:
                mask = labels[b] if c < 0 else F.one_hot(torch.tensor(c), 4).float()
                pcl += nn.MultiLabelSoftMarginLoss(reduction="none")(gap(merged[i]), mask[None]).mean()
                re += (torch.abs(features[b] - merged[i]) * mask[:, None, None]).mean()
                i += 1
        torch.testing.assert_close(piece_class_loss(merged, points, labels), pcl / n)
        torch.testing.assert_close(reconstruction_loss(features, merged, points, labels), re / n)
    none = [[], []]
    assert reconstruction_loss(features, features[:0], none, labels).item() == 0.0  # no cut: 0, not 0 / 0
    assert piece_class_loss(features[:0], none, labels).item() == 0.0


def test_the_ema_warms_up_and_averages_parameters_only():
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher[0].weight.add_(5.0)
        teacher[1].running_mean.fill_(7.0)
    ema_update(teacher, student, decay=0.99, step=0)  # min(1 - 1/1, 0.99) = 0: a copy
    assert torch.equal(teacher[0].weight, student[0].weight)
    assert teacher[1].running_mean.eq(7.0).all()  # buffers are the teacher's own
    before = teacher[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    ema_update(teacher, student, decay=0.99, step=3)  # a = min(1 - 1/4, 0.99) = 0.75
    torch.testing.assert_close(teacher[0].weight, 0.75 * before + 0.25 * student[0].weight)
    ema_update(teacher, student, decay=0.99, step=10_000)  # a capped at the decay
    torch.testing.assert_close(teacher[0].weight, 0.99 * (0.75 * before + 0.25 * student[0].weight)
                               + 0.01 * student[0].weight)  # fmt: skip


def test_the_batched_pieces_normalise_as_one_forward_per_cut():
    """Every cut's four pieces through the network at once, with BatchNorm over each group of four,
    give the official per-cut forwards' CAMs and leave the same running statistics."""
    torch.manual_seed(4)
    cfg = load_config("oass_digits", ["--model.backbone=resnet18"])
    recipe = build_recipe(cfg, [str(i) for i in range(3)])
    module = recipe.build_module().train()
    reference = copy.deepcopy(module)
    cuts = torch.randn(3 * 4, 3, 32, 32)
    with torch.no_grad():
        batched = module.pieces(cuts)
        model = reference.model
        one_by_one = torch.cat([model.head.classifier(model.backbone(cuts[4 * i : 4 * i + 4]).as_map())
                                for i in range(3)])  # fmt: skip
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-4)
    ours, theirs = module.model.backbone.named_buffers(), reference.model.backbone.named_buffers()
    for (name, a), (_, b) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=name)
    layer = nn.BatchNorm2d(2)
    x = torch.randn(8, 2, 3, 3)
    with ghost_batchnorm(layer, 4):
        out = layer(x)
    expected = torch.cat([F.batch_norm(x[i : i + 4], None, None, training=True) for i in (0, 4)])
    torch.testing.assert_close(out, expected)
    assert "forward" not in vars(layer)  # the layer is itself again afterwards


# --------------------------------------------------------------------------- the recipe


def tiny_recipe(*overrides):
    cfg = load_config("oass_digits", ["--model.backbone=resnet18", "--data.image_size=64", *overrides])
    recipe = build_recipe(cfg, [str(i) for i in range(4)])
    module = recipe.build_module()
    recipe.setup(module, context())  # as the builder does: the EMA teacher of the initialised module
    return recipe, module


def tiny_batch(rng, targets):
    images = torch.from_numpy(rng.normal(size=(len(targets), 3, 64, 64))).float()
    keys = [str(i) for i in range(len(targets))]
    return Batch([images], torch.tensor(targets, dtype=torch.float32), None, keys)


def context(step=0, total=100):
    return StepContext(step=step, epoch=0, total_steps=total, device=torch.device("cpu"), amp="off", rank=0,
                       world_size=1)  # fmt: skip


@pytest.mark.parametrize("strategy", ["max", "cmax", "ctopk", "ctopk_w"])
def test_gradients_reach_what_the_official_code_trains_and_nothing_else(rng, strategy):
    recipe, module = tiny_recipe(f"--recipe.keypoint={strategy}")
    batch = tiny_batch(rng, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    terms = recipe.training_step(module, batch, context(step=50))
    assert set(terms) == {"cls", "pcl", "re"}
    assert all(torch.isfinite(t.value) for t in terms.values())
    # max: the student cuts for itself, so the pieces' term trains it; with an EMA teacher it is a constant
    assert terms["pcl"].value.requires_grad == (strategy == "max")
    assert terms["re"].value.requires_grad and terms["re"].value > 0
    sum(t.weight * t.value for t in terms.values() if t.value.requires_grad).backward()
    assert all(p.grad is not None for p in module.parameters())
    if strategy == "max":
        assert recipe.teacher is None
    else:
        assert all(p.grad is None and not p.requires_grad for p in recipe.teacher.parameters())
        assert recipe.teacher.training  # the official teacher never leaves train mode


def test_without_the_cuts_terms_no_piece_is_cut_or_run(rng, monkeypatch):
    recipe, module = tiny_recipe("--recipe.alpha_p=0", "--recipe.alpha_re=0")
    monkeypatch.setattr(module, "pieces", lambda cuts: pytest.fail("pieces ran with both weights at 0"))
    monkeypatch.setattr(recipe.teacher, "pieces", lambda cuts: pytest.fail("the teacher ran"))
    terms = recipe.training_step(module, tiny_batch(rng, [[1, 0, 1, 0], [0, 0, 0, 1]]), context(step=50))
    assert set(terms) == {"cls"} and terms["cls"].value.requires_grad


def test_the_teacher_follows_the_student_and_resumes_from_its_state(rng):
    recipe, module = tiny_recipe("--recipe.teacher_decay=0.99")
    name = "model.head.classifier.weight"
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    recipe.after_step(module, context(step=1))  # after the first optimiser step: a copy of the student
    assert torch.equal(recipe.teacher.state_dict()[name], module.state_dict()[name])
    resumed, _ = tiny_recipe()
    resumed.load_state_dict(recipe.state_dict())
    assert torch.equal(resumed.teacher.state_dict()[name], recipe.teacher.state_dict()[name])


def test_the_reconstruction_weight_rises_from_step_zero():
    recipe, _ = tiny_recipe("--recipe.alpha_re=3.0", "--recipe.alpha_schedule_re=0.5")
    assert [recipe.reconstruction_weight(s, 100) for s in (0, 25, 50, 90)] == [0.0, 1.5, 3.0, 3.0]
    recipe, _ = tiny_recipe("--recipe.alpha_re=3.0", "--recipe.alpha_schedule_re=0")
    assert recipe.reconstruction_weight(0, 100) == 3.0


def test_the_optimiser_groups_are_the_officials():
    """core/abc_modules.py:27-50 with cMax.py:230-235: backbone weights 0.1, its biases 0.2, the heads'
    weights 1.0, their biases 2.0; weight decay on weights only (BatchNorm's included); momentum 1e-4."""
    from fastmlic.optim import build_optimizer

    cfg = load_config("oass_voc2012_cmax", ["--model.backbone=resnet18", "--model.pretrained=false"])
    module = build_recipe(cfg, [str(i) for i in range(20)]).build_module()
    optimizer = build_optimizer(module, cfg.optim)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert lr_of[id(named["model.backbone.model.conv1.weight"])] == (pytest.approx(0.1), 1e-4)
    assert lr_of[id(named["model.backbone.model.bn1.weight"])] == (pytest.approx(0.1), 1e-4)
    assert lr_of[id(named["model.backbone.model.bn1.bias"])] == (pytest.approx(0.2), 0.0)
    for name in ("classifier.weight", "bn_weight", "conv_weight"):
        assert lr_of[id(named[f"model.head.{name}"])] == (pytest.approx(1.0), 1e-4), name
    assert lr_of[id(named["model.head.bn_bias"])] == (pytest.approx(2.0), 0.0)
    assert {(g["momentum"], g["nesterov"]) for g in optimizer.param_groups} == {(1e-4, True)}


def test_the_last_stage_runs_at_stride_one_without_dilation():
    cfg = load_config("oass_digits", ["--model.backbone=resnet18", "--data.image_size=64"])
    module = build_recipe(cfg, ["a"]).build_module()
    assert module(torch.randn(1, 3, 64, 64))["cams"].shape[-2:] == (4, 4)  # 64 / 16
    assert all(m.dilation == (1, 1) for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--recipe.keypoint=peak"], r"recipe.keypoint: 'peak' is not one of 'max' \| 'cmax'"),
        (["--recipe.topk=0"], r"recipe.topk=0 must be at least 1"),
        (["--recipe.teacher_decay=1"], r"recipe.teacher_decay=1.0 must be in \[0, 1\)"),
        (["--recipe.alpha_re=-1"], r"recipe.alpha_re=-1.0 must be 0 or more"),
        (["--model.head=linear"], r"recipe.name=oass needs cams from the head"),
        (["--model.output_stride=16"], r"recipe.last_stride=1 sets the stride \(16\) itself"),
    ],
)
def test_bad_settings_are_refused_before_a_run_is_built(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("oass_digits", overrides))


def test_the_voc2012_presets_carry_the_released_settings():
    for strategy in ("max", "cmax", "ctopk", "ctopk_w"):
        cfg = load_config(f"oass_voc2012_{strategy}")
        assert cfg.recipe.keypoint == strategy and cfg.train.name == f"oass_voc2012_{strategy}"
        d = cfg.data
        assert (d.dataset, d.train_split, d.val_split) == ("voc2012", "train_aug", "seg_val")
        assert (d.image_size, d.resize, d.long_side, d.eval_resize, d.batch_size) == (
            512, "long_side", [320, 640], "pad", 32)
        assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.head, cfg.model.output_stride) == (
            "resnet50.tv_in1k", True, "csi", 0)
        o = cfg.optim
        assert (o.name, o.lr, o.backbone_lr_factor, o.momentum, o.nesterov, o.weight_decay) == (
            "sgd", 1.0, 0.1, 1e-4, True, 1e-4)
        assert (o.schedule, o.poly_power, cfg.train.epochs, cfg.ema.enabled) == ("poly", 0.9, 15, False)
        assert cfg.train.amp == "off"  # the official trains in fp32
        assert cfg.train.map_flavour == "non_interpolated"
        assert (cfg.loss.name, cfg.loss.reduction) == ("bce", "mean")
        r = cfg.recipe
        assert (r.topk, r.radius_typo, r.teacher_decay, r.last_stride) == (5, True, 0.99, 1)
        assert (r.alpha_p, r.alpha_re, r.alpha_schedule_re) == (0.5, 3.0, 0.05)


def test_end_to_end_on_digits(tmp_path):
    shards = rawdata.digits_shards(tmp_path / "shards", 64, 32, 64)
    summary = train.main(["--cfg", "oass_digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
                          "--data.workers=0", "--data.backend=torch", "--data.batch_size=32",
                          "--train.epochs=2", "--train.log_every=1"])  # fmt: skip
    run = tmp_path / "oass_digits"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 2 * 64 // 32
    assert all(r["loss_re"] > 0 and r["loss_pcl"] > 0 and r["loss_cls"] > 0 for r in steps)
    assert summary["finished"] and summary["epochs"] == 2
    last = torch.load(run / "last.pt", weights_only=False)
    assert "model.head.classifier.weight" in last["recipe"]["teacher"]  # resumes with its teacher
