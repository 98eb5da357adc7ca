"""SGRE (recipes/sgre.py) and class-name embeddings (recipes/sgre_embeddings.py, tools/label_embeddings.py):
the files and their sidecar, MiniLM's sense of relatedness, the BERT token choice on a tiny local model, GloVe
sums, the head on a CNN and a ViT, the mismatch errors, and end to end on digits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rawdata
import torch

from fastmlic import train
from fastmlic.config import ConfigError, ModelConfig, load_config
from fastmlic.models import build_model
from fastmlic.recipes.sgre import EncoderLayer, sine_positions
from fastmlic.recipes.sgre_embeddings import embed_bert, embed_glove, read_label_embeddings, texts_for

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "label_embeddings.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return rawdata.digits_shards(tmp_path_factory.mktemp("sgre"), 128, 64, 32)


def write(shards: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--data", "digits", "--shards", str(shards), *args],
                          capture_output=True, text=True)  # fmt: skip


# --------------------------------------------------------------------------- the embeddings files


@pytest.mark.parametrize("backend, dim", [("minilm", 384), ("random", 384)])
def test_the_tool_writes_the_same_file_twice_with_its_sidecar(shards, backend, dim):
    first = write(shards, "--backend", backend)
    assert first.returncode == 0, first.stderr[-2000:]
    path = shards / "digits" / f"label_embeddings.{backend}.npy"
    vectors = np.load(path)
    assert vectors.shape == (10, dim) and vectors.dtype == np.float32
    info = json.loads(path.with_suffix(".json").read_text())
    assert (info["backend"], info["dim"], info["classes"]) == (backend, dim, [str(i) for i in range(10)])
    if backend == "minilm":
        assert info["texts"][:2] == ["the digit zero", "the digit one"]
        assert "all-MiniLM-L6-v2" in info["model"]
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    assert write(shards, "--backend", backend).returncode == 0
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before  # deterministic
    assert "10 classes of digits ->" in first.stdout  # the summary


def test_minilm_puts_related_names_closer_than_unrelated_ones():
    from fastmlic.recipes.sgre_embeddings import embed_minilm

    v, _ = embed_minilm(["cat", "dog", "train", "car", "truck", "banana"])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # cat-dog beside cat-train (0.66 vs 0.36 here)
    assert v[3] @ v[4] > v[3] @ v[5] + 0.2  # car-truck beside car-banana (0.69 vs 0.39)


def test_class_names_are_made_readable_and_vg500_needs_names(tmp_path):
    assert texts_for("voc2007", ["diningtable", "pottedplant", "tvmonitor", "cat"]) == [
        "dining table", "potted plant", "tv monitor", "cat"]  # fmt: skip
    assert texts_for("mscoco", ["traffic light"]) == ["traffic light"]
    with pytest.raises(ValueError, match="vg500: its 500 classes are numbered.*--names FILE"):
        texts_for("vg500", ["0", "1"])
    names = tmp_path / "names.txt"
    names.write_text("tree\nman\n")
    assert texts_for("vg500", ["0", "1"], names) == ["tree", "man"]
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        texts_for("vg500", ["0", "1", "2"], names)


def test_bert_takes_the_one_word_piece_else_cls_on_a_tiny_local_model(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "dining", "table"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)  # fmt: skip
    model = BertModel(config).eval()
    model.save_pretrained(tmp_path)
    vectors, _ = embed_bert(["cat", "dining table"], str(tmp_path))
    with torch.no_grad():
        one = model(torch.tensor([[2, 5]])).last_hidden_state[0]  # [CLS] cat: the word's vector
        two = model(torch.tensor([[2, 7, 8]])).last_hidden_state[0]  # [CLS] dining table: [CLS]'s vector
    np.testing.assert_allclose(vectors[0], one[1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[1], two[0].numpy(), rtol=1e-5, atol=1e-6)


def test_glove_sums_the_words_of_a_name_and_names_a_missing_word(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("dining 1 2 3\ntable 10 20 30\ncat 0.5 0 0\n")
    vectors, _ = embed_glove(["dining table", "cat"], glove)
    np.testing.assert_allclose(vectors, [[11, 22, 33], [0.5, 0, 0]])
    with pytest.raises(ValueError, match="no vector for monitor"):
        embed_glove(["tv monitor"], glove)


def test_a_missing_file_or_other_classes_name_the_file_and_the_command(shards, tmp_path):
    command = "python tools/label_embeddings.py --data digits"
    missing = f"label_embeddings.bert.npy do not exist; write them with: {command}"
    with pytest.raises(FileNotFoundError, match=missing):
        read_label_embeddings(shards / "digits" / "label_embeddings.bert.npy", ["0"], command)
    assert write(shards, "--backend", "random").returncode == 0
    path = shards / "digits" / "label_embeddings.random.npy"
    assert read_label_embeddings(path, ["3", "1"], command).tolist() == np.load(path)[[3, 1]].tolist()
    with pytest.raises(ValueError, match="written for other classes: no row for cat"):
        read_label_embeddings(path, ["3", "cat"], command)
    result = write(tmp_path, "--backend", "random")
    assert result.returncode == 2 and "no split .json files; write the shards first" in result.stderr


# --------------------------------------------------------------------------- the head


def test_sine_positions_are_detrs_normalised_encoding():
    pos = sine_positions((2, 3), 8)
    assert pos.shape == (6, 8)
    r, c = 1, 2  # token 5: row 1, column 2 (row-major)
    y, x = (r + 1) / (2 + 1e-6) * 2 * math.pi, (c + 1) / (3 + 1e-6) * 2 * math.pi
    freq = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    expected = [f(v / freq[i]) for v in (y, x) for i, f in enumerate((math.sin, math.cos) * 2)]
    torch.testing.assert_close(pos[5], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_the_encoder_layer_adds_positions_to_queries_and_keys_only():
    torch.manual_seed(0)
    layer = EncoderLayer(8, 2, 16, 0.0, pre_norm=False).eval()
    x, pos = torch.randn(2, 5, 8), torch.randn(5, 8)
    attended = layer.attn(x + pos, x + pos, x, need_weights=False)[0]
    h = layer.norm1(x + attended)
    torch.testing.assert_close(layer(x, pos), layer.norm2(h + layer.ffn(h)))


@pytest.mark.parametrize("backbone,size", [("test_resnet", 64), ("test_vit", 160)])
def test_the_semantic_head_on_cnn_and_vit_backbones(backbone, size):
    embeddings = torch.randn(7, 12)
    model = build_model(ModelConfig(backbone=backbone, head="semantic", heads=4), 7,
                        embeddings=embeddings, position=True, attention_dim=32, feedforward=64)  # fmt: skip
    out = model(torch.randn(3, 3, size, size).to(memory_format=torch.channels_last))
    h, w = out["grid"]
    assert out["logits"].shape == out["label_logits"].shape == (3, 7)
    assert out["attention"].shape == (3, 7, h * w)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3, 7))
    (out["logits"].sum() + out["label_logits"].sum()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert torch.equal(model.head.embeddings, embeddings) and "head.embeddings" in model.state_dict()


def test_the_head_and_the_recipe_are_refused_apart(shards):
    from fastmlic.builder import check_recipe

    with pytest.raises(ConfigError, match="model.head=semantic needs embeddings, which recipe.name=standard"):
        check_recipe(load_config("digits", ["--model.head=semantic"]))
    with pytest.raises(ConfigError, match="recipe.name=sgre needs label_logits from the head"):
        check_recipe(load_config("sgre_digits", ["--model.head=label_attention"]))
    with pytest.raises(ConfigError, match=r"recipe.embeddings='glov': name a backend"):
        from fastmlic.builder import build_recipe

        build_recipe(load_config("sgre_digits", ["--recipe.embeddings=glov"]), ["0"]).build_module()


def test_the_presets_carry_the_official_readme_settings():
    official = {"voc2007": (0.1, 0.9983), "mscoco": (0.4, 0.9997), "nuswide": (0.05, 0.9997)}  # lamda, EMA
    for dataset, (weight, ema) in official.items():
        cfg = load_config(f"sgre_{dataset}")
        assert (cfg.recipe.weight, cfg.ema.decay) == (weight, ema)
        assert (cfg.optim.lr, cfg.data.batch_size) == (9e-5, 128)
        assert (cfg.data.image_size, cfg.recipe.position, cfg.model.backbone, cfg.model.heads) == (
            448, True, "resnet101.tv_in1k", 8)
        assert (cfg.optim.name, cfg.optim.pct_start, cfg.train.epochs, cfg.train.select_from) == (
            "adamw", 0.2, 60, "ema")
        assert (cfg.train.amp, cfg.train.sync_bn) == ("off", True)  # fp32 as the README; SyncBN as train.py
        assert cfg.loss.use_ignore == (dataset != "voc2007")  # VOC's difficult-only labels: negatives
        assert (cfg.loss.gamma_neg, cfg.loss.clip, cfg.loss.eps, cfg.loss.scale) == (2.0, 0.0, 1e-5, 1000.0)


# --------------------------------------------------------------------------- end to end


def test_end_to_end_on_digits_with_minilm_embeddings(shards, tmp_path):
    assert write(shards, "--backend", "minilm").returncode == 0
    args = ["--cfg", "sgre_digits", f"--data.shards={shards}", f"--train.out_dir={tmp_path}",
            "--data.image_size=32", "--data.workers=0", "--data.backend=torch", "--recipe.attention_dim=64",
            "--recipe.feedforward=64", "--train.epochs=2", "--train.log_every=1"]  # fmt: skip
    summary = train.main(args)
    run = tmp_path / "sgre_digits"
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "train"]
    assert len(steps) == 2 * 128 // 64
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + 0.4 * r["loss_label_cls"], rel=1e-5) for r in steps)
    assert summary["best"]["source"] == "ema" and summary["best"]["mAP"] > 0
    # the checkpoint carries the embeddings: evaluation needs no embeddings file
    (shards / "digits" / "label_embeddings.minilm.npy").rename(tmp_path / "moved.npy")
    try:
        from fastmlic.builder import load_for_inference

        loaded = load_for_inference(run / "best.pt", [], torch.device("cpu"))
        expected = np.load(tmp_path / "moved.npy")
        np.testing.assert_allclose(loaded.module.model.head.embeddings.numpy(), expected)
        missing = "label_embeddings.minilm.npy do not exist; write them with: python tools/label_emb"
        with pytest.raises(FileNotFoundError, match=missing):
            train.main([*args, "--train.name=again"])
    finally:
        (tmp_path / "moved.npy").rename(shards / "digits" / "label_embeddings.minilm.npy")


def test_random_embeddings_are_the_papers_learned_parameter():
    """recipe.embeddings=random: as the original's embed_type 'random', a [C, 768] parameter trained with
    the head (no file), kept in the checkpoint and read back from it for inference."""
    from fastmlic.builder import build_recipe

    cfg = load_config("sgre_digits", ["--recipe.embeddings=random", "--model.backbone=test_resnet",
                                      "--recipe.attention_dim=16", "--recipe.feedforward=16"])  # fmt: skip
    module = build_recipe(cfg, ["a", "b", "c"]).build_module()
    embeddings = module.model.head.embeddings
    assert isinstance(embeddings, torch.nn.Parameter) and embeddings.shape == (3, 768)
    assert embeddings.abs().max() <= 1 / 768**0.5 + 1e-6  # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(768))
    out = module(torch.randn(2, 3, 96, 96))  # a 3 x 3 grid: the attention over pixels is not constant
    (out["logits"].sum() + out["label_logits"].sum()).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    again = build_recipe(cfg, ["a", "b", "c"]).build_module(trained=module.state_dict())
    assert torch.equal(again.model.head.embeddings, embeddings)
