"""OASS (recipes/oass.py): Puzzle-CAM's tile/merge against a literal loop form, the four key-point
strategies on hand-made CAMs with known peaks, the CAM head, patches and instances, the losses and
their schedule, the EMA teacher (no gradient, its update, its resume), bad settings, end to end on digits."""

from __future__ import annotations

import json

import pytest
import rawdata
import torch
import torch.nn.functional as F

from fastmlic import train
from fastmlic.builder import build_recipe, check_recipe
from fastmlic.config import ConfigError, load_config
from fastmlic.data import Batch
from fastmlic.recipes.base import StepContext
from fastmlic.recipes.oass import (
    CAMHead,
    crop,
    instance_loss,
    keypoints,
    merge,
    normalised_cams,
    object_boxes,
    tile,
)


def literal_tile(x, pieces):
    """Puzzle-CAM's tile_features, loop for loop: split rows, then columns, concatenate along the batch."""
    n = int(pieces**0.5)
    h, w = x.shape[2] // n, x.shape[3] // n
    return torch.cat([patch for rows in torch.split(x, h, dim=2) for patch in torch.split(rows, w, dim=3)])


@pytest.mark.parametrize("pieces", [1, 4, 9])
def test_tile_matches_puzzle_cams_order_and_merge_inverts_it_exactly(rng, pieces):
    x = torch.from_numpy(rng.normal(size=(3, 5, 6, 12))).float()
    tiles = tile(x, pieces)
    assert torch.equal(tiles, literal_tile(x, pieces))
    assert torch.equal(merge(tiles, pieces), x)
    # image b's piece p sits at row p x B + b
    assert torch.equal(tile(x, 4)[1 * 3 + 2], x[2, :, :3, 6:])


def test_tiles_refuse_what_does_not_split():
    with pytest.raises(ValueError, match="pieces=3: must be a square number"):
        tile(torch.zeros(1, 1, 4, 4), 3)
    with pytest.raises(ValueError, match="a 5 x 4 map does not split into 2 x 2"):
        tile(torch.zeros(1, 1, 5, 4), 4)
    with pytest.raises(ValueError, match="6 tiles do not make whole 4-piece images"):
        merge(torch.zeros(6, 1, 2, 2), 4)


def cams_with_peaks() -> torch.Tensor:
    """One image, 3 channels on a 5 x 6 grid: a single peak, two equal peaks, and a flat channel."""
    cams = torch.zeros(1, 3, 5, 6)
    cams[0, 0, 3, 4] = 5.0
    cams[0, 0, 1, 1] = 2.0  # a lower local maximum
    cams[0, 1, 0, 5] = 4.0
    cams[0, 1, 4, 0] = 4.0  # the same height, later in row-major order
    cams[0, 2] = 1.0  # no variation
    return cams


def test_max_and_cmax_take_the_first_peak_and_the_centre_of_a_flat_channel():
    cams = cams_with_peaks()
    assert keypoints(cams, "cmax").tolist() == [[[3.0, 4.0], [0.0, 5.0], [2.0, 2.5]]]
    assert keypoints(cams, "max").tolist() == [[[3.0, 4.0]]]  # the merged map's peak is channel 0's
    assert keypoints(cams[:, 2:], "max").tolist() == [[[2.0, 2.5]]]  # nothing but a flat channel


def test_ctopk_centres_the_k_highest_local_maxima_and_uses_all_when_fewer():
    cams = cams_with_peaks()
    points = keypoints(cams, "ctopk", k=2)
    assert points[0, 0].tolist() == [2.0, 2.5]  # (3, 4) and (1, 1)
    assert points[0, 1].tolist() == [2.0, 2.5]  # (0, 5) and (4, 0)
    assert points[0, 2].tolist() == [2.0, 2.5]  # flat: the centre
    assert keypoints(cams, "ctopk", k=1)[0, :2].tolist() == [[3.0, 4.0], [0.0, 5.0]]  # ties: row-major first
    # k larger than the number of local maxima: all of them. Two cones have exactly two local maxima (a
    # zero plateau would count every cell of it)
    rows, cols = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    high = 5 - 2 * ((rows - 3) ** 2 + (cols - 4) ** 2).sqrt()
    cones = torch.maximum(high, 2 - ((rows - 1) ** 2 + (cols - 1) ** 2).sqrt())
    assert keypoints(cones[None, None], "ctopk", k=10).tolist() == [[[2.0, 2.5]]]


def test_ctopk_w_weights_the_maxima_by_their_normalised_values():
    ground = torch.zeros(1, 1, 5, 6)
    ground[0, 0, 4, 5], ground[0, 0, 0, 0] = 4.0, 1.0  # normalised weights 1 and 0.25
    expected = [(4 * 1 + 0 * 0.25) / 1.25, (5 * 1 + 0 * 0.25) / 1.25]
    torch.testing.assert_close(keypoints(ground, "ctopk_w", k=2)[0, 0], torch.tensor(expected))
    # unweighted, the same two maxima meet halfway
    assert keypoints(ground, "ctopk", k=2)[0, 0].tolist() == [2.0, 2.5]


def test_keypoints_refuse_unknown_strategies_and_shapes():
    with pytest.raises(ValueError, match="keypoint strategy 'top': use one of max, cmax, ctopk, ctopk_w"):
        keypoints(torch.zeros(1, 1, 2, 2), "top")
    with pytest.raises(ValueError, match=r"cams must be \[B, C, H, W\]"):
        keypoints(torch.zeros(2, 2), "max")


# --------------------------------------------------------------------------- head, patches, instances


def test_the_cam_head_scores_the_mean_of_its_cams_and_classifies_vectors_alike(rng):
    head = CAMHead(8, 3)
    fmap = torch.from_numpy(rng.normal(size=(2, 8, 4, 5))).float()
    features = type("F", (), {"as_map": lambda self: fmap})()
    out = head(features, return_attention=True)
    torch.testing.assert_close(out["logits"], out["cams"].mean((2, 3)))
    torch.testing.assert_close(head.classify(fmap.mean((2, 3))), out["logits"])  # linear: pool, then classify
    assert out["attention"].shape == (2, 3, 20)
    assert out["attention"].min() >= 0 and out["attention"].max() < 1


def test_normalised_cams_are_relu_over_the_channel_peak():
    cams = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]]]])
    torch.testing.assert_close(normalised_cams(cams), torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]]), atol=1e-4,
                               rtol=0)  # fmt: skip


def test_object_boxes_centre_on_the_cell_and_stay_inside_the_image():
    points = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0], [1.5, 1.5]])
    boxes = object_boxes(points, (4, 4), (64, 64), 0.5)  # 16 px cells, 32 px patches
    assert boxes.tolist() == [
        [24.0, 8.0, 56.0, 40.0],  # cell (1, 2) has its centre at (24, 40)
        [0.0, 0.0, 32.0, 32.0],  # the corner: moved inside
        [32.0, 32.0, 64.0, 64.0],
        [16.0, 16.0, 48.0, 48.0],  # between cells (ctopk's centres): the point (32, 32)
    ]


def test_crop_cuts_the_exact_pixels_of_each_box(rng):
    images = torch.from_numpy(rng.normal(size=(2, 3, 16, 12))).float()
    rois = torch.tensor([[1.0, 2.0, 5.0, 10.0, 13.0], [0.0, 0.0, 0.0, 8.0, 8.0]])
    patches = crop(images, rois[:1], (8, 8))
    torch.testing.assert_close(patches[0], images[1, :, 5:13, 2:10])
    assert crop(images, rois[:0], (8, 8)).shape == (0, 3, 8, 8)


def test_an_instance_learns_its_class_and_leaves_the_other_present_classes_out(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 4))).float()
    classes = torch.tensor([0, 2])
    present = torch.tensor([[True, False, True, False], [True, False, True, False]])
    bce = F.binary_cross_entropy_with_logits(logits, F.one_hot(classes, 4).float(), reduction="none")
    kept = [bce[0, 0], bce[0, 1], bce[0, 3], bce[1, 1], bce[1, 2], bce[1, 3]]  # not (0, 2), not (1, 0)
    torch.testing.assert_close(instance_loss(logits, classes, present), torch.stack(kept).mean())
    assert instance_loss(logits[:0], classes[:0], present[:0]).item() == 0.0


# --------------------------------------------------------------------------- the recipe


def tiny_recipe(*overrides):
    cfg = load_config("oass_digits", ["--model.backbone=resnet18", "--data.image_size=32", *overrides])
    recipe = build_recipe(cfg, [str(i) for i in range(4)])
    module = recipe.build_module()
    recipe.setup(module, context())  # as the builder does: the EMA teacher of the initialised module
    return recipe, module


def tiny_batch(rng, targets):
    images = torch.from_numpy(rng.normal(size=(len(targets), 3, 32, 32))).float()
    keys = [str(i) for i in range(len(targets))]
    return Batch([images], torch.tensor(targets, dtype=torch.float32), None, keys)


def context(step=0, total=100):
    return StepContext(step=step, epoch=0, total_steps=total, device=torch.device("cpu"), amp="off", rank=0,
                       world_size=1)  # fmt: skip


@pytest.mark.parametrize("strategy", ["max", "cmax", "ctopk", "ctopk_w"])
def test_every_term_reaches_the_student_and_the_teacher_gets_no_gradient(rng, strategy):
    recipe, module = tiny_recipe(f"--recipe.keypoint={strategy}")
    batch = tiny_batch(rng, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    terms = recipe.training_step(module, batch, context(step=50))
    assert set(terms) == {"cls", "pcl", "re", "ss", "csi"}
    assert all(torch.isfinite(t.value) and t.value.requires_grad for t in terms.values())
    assert terms["ss"].value > 0 and terms["csi"].value > 0
    sum(t.weight * t.value for t in terms.values()).backward()
    teacher = recipe.teacher.module
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in module.parameters())
    assert teacher is not module and not teacher.training


def test_a_batch_without_present_classes_gives_zero_patch_and_instance_terms(rng):
    recipe, module = tiny_recipe()
    terms = recipe.training_step(module, tiny_batch(rng, [[0, 0, 0, 0], [0, 0, 0, 0]]), context())
    assert terms["ss"].value.item() == 0.0 and terms["csi"].value.item() == 0.0
    assert torch.isfinite(terms["cls"].value)


def test_the_reconstruction_weight_rises_as_puzzle_cams_alpha():
    recipe, _ = tiny_recipe("--recipe.alpha_re=3.0", "--recipe.alpha_schedule_re=0.5")
    assert [recipe.reconstruction_weight(s, 100) for s in (0, 25, 50, 90)] == [0.0, 1.5, 3.0, 3.0]
    recipe, _ = tiny_recipe("--recipe.alpha_re=3.0", "--recipe.alpha_schedule_re=0")
    assert recipe.reconstruction_weight(0, 100) == 3.0


def test_the_teacher_follows_the_student_by_its_decay_and_resumes_from_its_state(rng):
    recipe, module = tiny_recipe("--recipe.teacher_decay=0.9")
    recipe.training_step(module, tiny_batch(rng, [[1, 0, 0, 0]]), context())
    start = {k: v.clone() for k, v in recipe.teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    recipe.after_step(module, context(step=10))  # timm copies outright at step 1, then decays
    name = "model.head.classifier.weight"
    torch.testing.assert_close(recipe.teacher.module.state_dict()[name],
                               0.9 * start[name] + 0.1 * module.state_dict()[name])  # fmt: skip
    # a resumed run loads the teacher's state into the teacher its setup made of a fresh module
    resumed, fresh = tiny_recipe("--recipe.teacher_decay=0.9")
    resumed.load_state_dict(recipe.state_dict())
    resumed.training_step(fresh, tiny_batch(rng, [[1, 0, 0, 0]]), context())
    teachers = resumed.teacher.module.state_dict(), recipe.teacher.module.state_dict()
    torch.testing.assert_close(teachers[0][name], teachers[1][name])


def test_tiles_whose_cams_do_not_merge_to_the_full_grid_are_explained(rng):
    recipe, module = tiny_recipe()
    batch = tiny_batch(rng, [[1, 0, 0, 0]])
    batch.views[0] = torch.zeros(1, 3, 40, 40)  # stride 16: a 3 x 3 grid, but 20 px tiles give 2 x 2 each
    with pytest.raises(ValueError, match=r"CAMs are \(3, 3\) cells, the merged tiles' \(4, 4\); use a "
                                         r"data.image_size that is a multiple of 2 x the backbone's stride"):
        recipe.training_step(module, batch, context())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--recipe.keypoint=peak"], r"recipe.keypoint='peak': use one of max, cmax, ctopk, ctopk_w"),
        (["--recipe.topk=0"], r"recipe.topk=0 must be at least 1"),
        (["--recipe.teacher_decay=1"], r"recipe.teacher_decay=1.0 must be in \[0, 1\)"),
        (["--recipe.patch_scale=0"], r"recipe.patch_scale=0.0 must be in \(0, 1\]"),
        (["--recipe.pieces=2"], r"recipe.pieces=2 must be a square number"),
        (["--recipe.alpha_re=-1"], r"recipe.alpha_re=-1.0 must be 0 or more"),
        (["--model.head=linear"], r"recipe.name=oass needs cams from the head"),
        (["--model.output_stride=4"], r"model.output_stride=4 must be 0"),
    ],
)
def test_bad_settings_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config("oass_digits", overrides))


def test_the_voc2012_presets_carry_puzzle_cams_settings_and_the_readme_weights():
    for strategy in ("max", "cmax", "ctopk", "ctopk_w"):
        cfg = load_config(f"oass_voc2012_{strategy}")
        assert cfg.recipe.keypoint == strategy and cfg.train.name == f"oass_voc2012_{strategy}"
        assert (cfg.data.dataset, cfg.data.train_split, cfg.data.val_split) == ("voc2012", "train_aug", "val")
        model = (cfg.model.backbone, cfg.model.pretrained, cfg.model.head, cfg.model.output_stride)
        assert model == ("resnet50.tv_in1k", True, "cam", 16)
        assert (cfg.data.image_size, cfg.data.batch_size, cfg.train.epochs) == (512, 32, 15)
        assert (cfg.optim.name, cfg.optim.nesterov, cfg.optim.schedule, cfg.optim.weight_decay) == (
            "sgd", True, "poly", 1e-4)
        assert cfg.optim.lr * cfg.optim.backbone_lr_factor == pytest.approx(0.1)  # classifier at 10x
        assert (cfg.loss.name, cfg.loss.reduction) == ("bce", "mean")
        r = cfg.recipe
        assert (r.alpha_p, r.alpha_re, r.alpha_schedule_re, r.pieces) == (0.5, 3.0, 0.05, 4)


def test_end_to_end_on_digits(tmp_path):
    shards = rawdata.digits_shards(tmp_path / "shards", 64, 32, 32)
    summary = train.main(["--cfg", "oass_digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
                          "--data.image_size=32", "--data.workers=0", "--data.backend=torch",
                          "--data.batch_size=32", "--train.epochs=2", "--train.log_every=1"])  # fmt: skip
    run = tmp_path / "oass_digits"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 2 * 64 // 32
    assert all(r["loss_ss"] > 0 and r["loss_csi"] > 0 and r["loss_pcl"] > 0 for r in steps)
    assert summary["finished"] and summary["epochs"] == 2
    last = torch.load(run / "last.pt", weights_only=False)
    assert "module.model.head.classifier.weight" in last["recipe"]["teacher"]  # resumes with its teacher
