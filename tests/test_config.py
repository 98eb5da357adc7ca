import subprocess
import sys

import pytest
from conftest import ROOT

from fastmlic.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    describe,
    find_config,
    load_config,
    parse_overrides,
)


def test_defaults_are_valid_and_every_field_has_help():
    cfg = load_config()
    assert isinstance(cfg, Config)
    text = describe()
    for section in ("data", "model", "loss", "optim", "train", "ema"):
        assert f"{section}:" in text
    assert all(": " in line for line in text.splitlines() if line.startswith("  --"))


def test_help_shows_the_values_the_command_line_resolves_to(capsys):
    from fastmlic import config, train

    with pytest.raises(SystemExit) as done:
        train.parse_args(["--help"])  # no --cfg: what a run without one uses, digits
    text = capsys.readouterr().out
    assert done.value.code == 0
    assert "--data.image_size=48" in text and "default 448" in text and "--model.backbone='resnet18'" in text
    assert "--cfg digits" in text and "auto picks DALI where it is installed" in text
    with pytest.raises(SystemExit):
        train.parse_args(["--cfg", "coco_digits", "--data.image_size=32", "--model.backbone=resnet10t", "-h"])
    text = capsys.readouterr().out
    assert "--data.image_size=32" in text and "--model.backbone='resnet10t'" in text and "here 'coco'" in text
    with pytest.raises(SystemExit):
        config.main(["--help"])
    assert "--train.epochs=5 " in capsys.readouterr().out  # digits' 5, not the dataclass default 40


HELP_WITHOUT_TORCH = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:], "--help"]
try:
    if sys.argv[0].endswith(".py"):
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert e.code in (0, None), e.code
print("torch imported" if "torch" in sys.modules else "no torch")
"""


@pytest.mark.parametrize("command", [
    ["fastmlic/train.py"], ["fastmlic/train.py", "--cfg", "mulcon_stage2_digits"], ["fastmlic.config"],
    ["fastmlic.evaluate"], ["fastmlic.predict"], ["fastmlic.report"], ["fastmlic.pipeline"],
    ["fastmlic.pipeline", "--cfg", "psd_digits"], ["fastmlic.convert"], ["tools/class_partitions.py"],
    ["tools/make_shards.py"], ["tools/label_embeddings.py"],
])  # fmt: skip
def test_every_command_answers_help_without_importing_torch(command):
    # `import torch` takes seconds; a --help that waits for it is what users complained of
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH, *command], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "no torch", done.stdout[-500:]


@pytest.mark.parametrize("name", ["digits", "voc2007", "mscoco", "nuswide", "vg500", "openimages"])
def test_every_recipe_loads_by_bare_name(name):
    cfg = load_config(f"{name}.yaml")
    assert cfg.data.dataset == name
    assert load_config(name) == cfg  # without the extension too


def test_field_settings_of_the_recipes():
    assert load_config("vg500.yaml").data.image_size == 512
    for name in ("voc2007", "mscoco", "nuswide"):
        assert load_config(name).data.image_size == 448
    coco = load_config("mscoco")
    assert (coco.loss.name, coco.loss.gamma_neg, coco.loss.gamma_pos, coco.loss.clip) == (
        "asl",
        4.0,
        0.0,
        0.05,
    )
    assert coco.ema.decay == 0.9997 and coco.optim.schedule == "onecycle"
    assert load_config("voc2007").optim.pct_start != coco.optim.pct_start
    oi = load_config("openimages")  # unverified labels: negatives in the loss, left out of the metrics
    assert oi.loss.use_ignore is False and oi.data.val_split == "validation"


def test_precedence_defaults_then_yaml_then_command_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 2e-4\n  pct_start: 0.3\ndata:\n  image_size: 224\n")
    cfg = load_config(path, ["--optim.lr=5e-5", "--data.batch_size", "12"])
    assert cfg.optim.lr == 5e-5  # command line beats YAML
    assert cfg.optim.pct_start == 0.3  # YAML beats default
    assert cfg.data.image_size == 224
    assert cfg.data.batch_size == 12
    assert cfg.optim.weight_decay == Config().optim.weight_decay  # untouched default


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'"):
        load_config(None, ["--optim.lrr=0.1"])
    # a recipe config's class attribute (what of its paper's releases `convert` reads) is no key
    with pytest.raises(ConfigError, match=r"unknown config key 'recipe\.released' of recipe 'coco'"):
        load_config("coco_digits", ["--recipe.released=x"])
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*'train\.epocs'.*'train\.epochs'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config section 'optm'.*'optim'"):
        load_config(None, ["--optm.lr=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--data.image_size=big", r"data\.image_size: expected int"),
        ("--data.image_size=2.5", r"data\.image_size: expected int"),
        ("--ema.enabled=1", r"ema\.enabled: expected bool"),
        ("--data.mean=0.5", r"data\.mean: expected a list"),
        ("--data.mean=[0.5, x, 0.5]", r"data\.mean\[1\]: expected float"),
        ("--model.head=label_atention", r"not a known head; did you mean 'label_attention'"),
    ],
)
def test_wrong_types_are_errors(override, message):
    from fastmlic.builder import check_recipe  # a head's name: checked with the heads' code, as a run does

    with pytest.raises(ConfigError, match=message):
        check_recipe(load_config(None, [override]))


def test_ints_widen_to_float_and_strings_stay_strings():
    cfg = load_config(None, ["--optim.lr=1", "--model.backbone=123", "--model.pretrained_path=null",
                             "--data.classes=[7, cat, 0.50]"])  # fmt: skip
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.backbone == "123"
    assert cfg.data.classes == ["7", "cat", "0.50"]  # class names as written
    assert cfg.model.pretrained_path is None


def test_only_true_and_false_are_booleans(tmp_path):
    # YAML 1.1 reads off/yes/no as booleans: `amp: off` would become False and fail its choices
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path).train.amp == "off"
    assert load_config(None, ["--train.amp=off"]).train.amp == "off"
    assert load_config(None, ["--ema.enabled=False"]).ema.enabled is False
    with pytest.raises(ConfigError, match=r"ema\.enabled: expected bool"):
        load_config(None, ["--ema.enabled=yes"])


def test_cross_field_checks_name_the_flag():
    with pytest.raises(ConfigError, match="optim.pct_start"):
        load_config(None, ["--optim.pct_start=1.5"])
    with pytest.raises(ConfigError, match="model.pretrained or model.pretrained_path"):
        load_config(None, ["--model.pretrained=true", "--model.pretrained_path=w.pth"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--optim.lr=-0.1", r"optim.lr=-0.1 must be 0 or more"),
        ("--train.epochs=0", r"train.epochs=0 must be at least 1"),
        ("--data.workers=-1", r"data.workers=-1 must be 0 \(in the main process\) or more"),
        ("--train.log_every=0", r"train.log_every=0 must be at least 1"),
        ("--train.threshold=1.5", r"train.threshold=1.5 must be in \[0, 1\]"),
        ("--train.keep_checkpoints=0", r"train.keep_checkpoints=0 must be at least 1"),
        ("--train.checkpoint_every_steps=-1", r"train.checkpoint_every_steps=-1 must be 0 \(off\)"),
    ],
)
def test_out_of_range_values_name_the_key_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", [override])


def test_missing_config_file_lists_the_recipes():
    with pytest.raises(ConfigError, match="vg500.yaml"):
        find_config("nope.yaml")
    assert find_config("vg500.yaml") == CONFIG_DIR / "vg500.yaml"


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_overrides(["lr=3"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--optim.lr"])


def test_a_preset_extends_the_config_it_names_as_base(tmp_path):
    base = tmp_path / "mybase.yaml"
    base.write_text("data:\n  image_size: 224\n  batch_size: 8\noptim:\n  lr: 1e-3\n")
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"base: {base}\ndata:\n  batch_size: 16\n")
    cfg = load_config(preset, ["--optim.lr=5e-4"])
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.optim.lr) == (224, 16, 5e-4)  # base < preset < CLI
    coco = load_config("mulcon_stage1_mscoco")
    assert (coco.data.dataset, coco.optim.pct_start, coco.data.image_size) == ("mscoco", 0.2, 448)
    base.write_text(f"base: {preset}\n")
    with pytest.raises(ConfigError, match=r"base must name one other config file, without cycles"):
        load_config(preset)
    base.write_text("data:\n  imagesize: 3\n")
    with pytest.raises(ConfigError, match=r"mybase.yaml: unknown config key 'data.imagesize'"):
        load_config(preset)
    # a base named relative to the file naming it is found beside it, whatever the working directory
    base.write_text("data:\n  image_size: 224\n")
    preset.write_text("base: mybase.yaml\n")
    assert load_config(preset).data.image_size == 224
    preset.write_text("base: nosuch.yaml\n")  # the error names the file holding the `base:`
    with pytest.raises(ConfigError, match=r"preset.yaml: base: config file 'nosuch.yaml' not found"):
        load_config(preset)


def test_configs_load_from_several_threads_at_once():
    # the recipes' configs load on first use: a thread that comes while another loads them waits for it
    # (the recipes benchmark loads its rows' configs in a thread pool)
    code = ("import threading\nfrom fastmlic.config import load_config\nerrors = []\n"
            "def load():\n    try:\n        load_config('mulcon_stage1_digits')\n"
            "    except Exception as e:\n        errors.append(repr(e))\n"
            "threads = [threading.Thread(target=load) for _ in range(8)]\n"
            "[t.start() for t in threads]\n[t.join() for t in threads]\nprint(errors)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
