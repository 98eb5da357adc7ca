"""Typed, strict configuration: dataclass sections, YAML recipes and `--section.key=value` overrides.

Precedence is defaults < YAML < command line. Every field has a type, a default and a one-line help
string; an unknown key or a value of the wrong type is an error that names the key and, for a typo,
the closest valid key. Config files in `fastmlic/configs/` are found by bare name (`--cfg vg500.yaml`).

The `recipe` section is typed by the training recipe it names: `recipe: {name: NAME, ...}` selects a
recipe registered in `fastmlic.recipes`, and its other keys are that recipe's own dataclass fields.
Setting `recipe.name` to another recipe starts that recipe's keys from their defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .errors import InputError
from .plugins import load_configs
from .registry import Registry, UnknownName

CONFIG_DIR = Path(__file__).parent / "configs"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; every user writes learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.inf|\.nan)$"),
    list("-+0123456789."),
)


# YAML 1.1 also reads yes/no/on/off as booleans, so `--train.amp=off` became False; only true and false are
# (YAML 1.2's rule), and an enum value is read as written
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(InputError):
    """A config key or value that cannot be accepted; the message says which and why."""


@dataclass(frozen=True)
class Range:
    """The values a number field allows (a list field: each item): `low`/`high` inclusive bounds,
    `above`/`below` exclusive ones, or `choices`; `zero` says what 0 means where it is a special value."""

    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple | None = None
    zero: str = ""

    def allows(self, v: float) -> bool:
        if self.choices is not None:
            return v in self.choices
        lower = (self.low is None or v >= self.low) and (self.above is None or v > self.above)
        return lower and (self.high is None or v <= self.high) and (self.below is None or v < self.below)

    def describe(self) -> str:
        """'at least 1', '0 (off) or more', 'positive', 'in [0, 1)', '1 or 2', ..."""
        zero = f"0 ({self.zero})" if self.zero else "0"
        if self.choices is not None:
            names = [zero if c == 0 else f"{c:g}" for c in self.choices]
            return ", ".join(names[:-1]) + f" or {names[-1]}"
        lower = ("[", self.low) if self.low is not None else ("(", self.above)
        upper = ("]", self.high) if self.high is not None else (")", self.below)
        if lower[1] is not None and upper[1] is not None:
            return f"in {lower[0]}{lower[1]:g}, {upper[1]:g}{upper[0]}"
        if self.low is not None:
            return f"{zero} or more" if self.low == 0 else f"at least {self.low:g}"
        if self.above is not None:
            return "positive" if self.above == 0 else f"more than {self.above:g}"
        return f"at most {self.high:g}" if self.high is not None else f"less than {self.below:g}"


def option(default: Any, help: str, **allowed) -> Any:
    """A config field with its one-line help and, as keywords, the values it allows (`Range`: low, high,
    above, below, choices, zero), checked whenever a config loads; lists get a fresh copy per instance."""
    metadata = {"help": help, "range": Range(**allowed) if allowed else None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    dataset: str = option("digits", "shard set name: shards are read from <shards>/<dataset>/<split>.json")
    shards: str = option("shards", "directory that holds the shard sets written by tools/make_shards.py")
    train_split: str = option("train", "split used for training")
    val_split: str = option("val", "split used for evaluation")
    image_size: int = option(448, "square training and evaluation image side in pixels", low=16)
    batch_size: int = option(32, "images per device per step", low=1)
    workers: int = option(
        4, "CPU threads (DALI) or worker processes (PyTorch) per device", low=0, zero="in the main process"
    )
    resize: Literal["squash", "random_resized_crop", "long_side"] = option(
        "squash", "training: squash-resize to the square (the MLIC default), random resized crop, or "
        "long_side: a random longer side in data.long_side, then a random image_size crop, padded with the "
        "mean colour where the image is smaller (Puzzle-CAM's and OASS's)"
    )
    crop_scale: list[float] = option([0.5, 1.0], "area range of random_resized_crop")
    long_side: list[int] = option(
        [320, 640], "resize long_side: the range of the longer side in pixels, both ends included", low=1
    )
    eval_resize: Literal["squash", "pad"] = option(
        "squash", "evaluation: squash-resize to the square, or pad: the image as it is at the top-left of "
        "an image_size square of the mean colour, cropped where larger (OASS's evaluation)"
    )
    hflip: bool = option(True, "random horizontal flip in training")
    randaugment_n: int = option(2, "RandAugment: operations per image (0 turns it off)", low=0, zero="off")
    randaugment_m: int = option(9, "RandAugment: magnitude bin, 0..30", low=0, high=30)
    cutout: float = option(
        0.5, "Cutout side as a fraction of the image side (0 turns it off)", low=0, below=1
    )
    mean: list[float] = option([0.485, 0.456, 0.406], "per-channel mean in [0, 1]; [0, 0, 0] for none")
    std: list[float] = option([0.229, 0.224, 0.225], "per-channel std in [0, 1]; [1, 1, 1] for none", above=0)
    backend: Literal["auto", "dali", "torch"] = option(
        "auto", "data loader: DALI (decodes on the GPU, or in its CPU mode) or the PyTorch DataLoader; auto "
        "picks DALI where it is installed (the faster on CPU too), else PyTorch"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "dtype of the image tensors")
    shuffle_buffer: int = option(
        1024, "DALI: training shuffle buffer in samples (shards are pre-shuffled)", low=1
    )
    classes: list[str] = option(
        [], "train and evaluate on these classes only (names from the split; empty: every class)"
    )


@dataclass
class ModelConfig:
    backbone: str = option("resnet50", "timm model name")
    pretrained: bool = option(False, "load timm's pretrained weights from the hub")
    pretrained_path: str | None = option(None, "load backbone weights from this local file instead")
    head: str = option("linear", "classification head by name: linear, label_attention, or one a recipe adds")
    drop_rate: float = option(0.0, "dropout before the classifier", low=0, below=1)
    embed_dim: int = option(
        512, "label-level heads: width of the label queries and per-label features (0: the backbone's width)",
        low=0, zero="the backbone's width",
    )
    heads: int = option(4, "label-level heads: attention heads", low=1)
    output_stride: int = option(
        0, "CNN backbones: stride of the last feature map (16, 8: dilated last stages); 0: the backbone's",
        choices=(0, 8, 16, 32), zero="the backbone's own",
    )


@dataclass
class LossConfig:
    name: Literal["asl", "bce"] = option("asl", "classification loss")
    gamma_pos: float = option(0.0, "ASL focusing exponent for positives", low=0)
    gamma_neg: float = option(4.0, "ASL focusing exponent for negatives", low=0)
    clip: float = option(0.05, "ASL probability margin for negatives (0 turns it off)", low=0, below=1)
    eps: float = option(1e-8, "ASL floor inside the logarithm", above=0)
    detach_focal: bool = option(True, "treat the ASL focusing weight as a constant in the gradient")
    reduction: Literal["sum", "mean"] = option("sum", "sum over batch and classes (ASL) or mean")
    scale: float = option(
        1.0, "multiplier after the reduction (mean x 1000 is the Query2Label form)", above=0
    )
    use_ignore: bool = option(
        True, "leave the cells the shards mark ignore out of the loss (VOC's difficult-only labels, Open "
        "Images' unverified ones); false trains them as negatives, as ASL trains Open Images. Metrics always "
        "leave them out"
    )


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = option("adam", "optimizer")
    lr: float = option(1e-4, "peak learning rate", low=0)
    weight_decay: float = option(
        1e-4, "weight decay, applied to weights only (none on biases and norms)", low=0
    )
    momentum: float = option(0.9, "SGD momentum", low=0, below=1)
    backbone_lr_factor: float = option(1.0, "backbone learning rate as a fraction of lr", low=0)
    schedule: Literal["onecycle", "cosine", "step", "poly"] = option(
        "onecycle", "learning-rate schedule, stepped per iteration: OneCycle, cosine, step decay or poly"
    )
    pct_start: float = option(
        0.2, "OneCycle: fraction of training spent rising to the peak", above=0, below=1
    )
    warmup_epochs: float = option(0.0, "cosine: linear warm-up length in epochs", low=0)
    step_epochs: float = option(
        20.0, "step: multiply the learning rate by step_gamma every this many epochs", above=0
    )
    step_gamma: float = option(0.1, "step: decay factor", above=0)
    poly_power: float = option(
        0.9, "poly: the learning rate falls as (1 - step / total steps) ** poly_power", above=0
    )
    nesterov: bool = option(True, "SGD: Nesterov momentum (false: plain momentum)")
    grad_clip: float = option(0.0, "clip the gradient norm to this value (0 turns it off)", low=0, zero="off")
    accumulate: int = option(1, "micro-batches per optimizer step (gradient accumulation)", low=1)


@dataclass
class TrainConfig:
    epochs: int = option(40, "training epochs", low=1)
    seed: int = option(0, "random seed for model init, shuffling and augmentation")
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "mixed precision: bf16 (no scaler), fp16 (GradScaler), off (fp32), or auto: bf16 where the "
        "device computes in it (CUDA with bf16, CPUs with avx512_bf16/amx_bf16), fp16 on older CUDA, else off"
    )
    channels_last: bool = option(
        True, "NHWC memory format for images and the model (faster on CPU in fp32 and in bf16: "
        "benchmarks/precision.py)"
    )
    out_dir: str = option("runs", "directory under which run folders are created")
    name: str | None = option(None, "run folder name (default: DATASET-BACKBONE-DATE-TIME)")
    device: Literal["auto", "cuda", "cpu"] = option("auto", "training device; auto = CUDA when available")
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across DDP ranks")
    threshold: float = option(0.5, "score threshold for CP/CR/CF1/OP/OR/OF1", low=0, high=1)
    patience: int = option(
        0, "stop when the headline mAP has not improved for this many epochs (0: never)", low=0, zero="never"
    )
    result: Literal["best", "final"] = option(
        "best", "what best.pt holds: the epoch with the best headline mAP on the validation split, or the "
        "final epoch's weights (what a method's own test command reports when it evaluates a fixed epoch)"
    )
    select_from: Literal["both", "raw", "ema"] = option(
        "both", "weights that count for best.pt and early stopping: the better of raw and EMA, or one"
    )
    stop_after: int = option(
        0, "end this invocation after this many epochs; --resume continues (0: never)", low=0, zero="never"
    )
    init_from: str | None = option(None, "initialise the model from this checkpoint (e.g. a stage-one run)")
    tensorboard: bool = option(False, "also write TensorBoard scalars to the run folder")
    log_every: int = option(20, "steps between training-loss records in the metrics log", low=1)
    checkpoint_every_steps: int = option(
        0, "also save a resumable checkpoint every this many steps (0: off)", low=0, zero="off"
    )
    checkpoint_every_minutes: float = option(
        30.0, "also save a resumable checkpoint when this many minutes have passed since the last (0: off)",
        low=0, zero="off",
    )
    keep_epochs: list[int] = option(
        [], "also keep these epochs' end-of-epoch states as RUN/epochs/epoch-NNN.pt (a later stage starts "
        "from one)", low=1
    )
    keep_checkpoints: int = option(
        2, "training states kept in RUN/checkpoints (last.pt is kept besides)", low=1
    )
    dist_timeout_minutes: float = option(
        10.0, "DDP: a collective waiting this long for a dead or stuck rank fails (all ranks stop)", above=0)
    map_flavour: Literal["non_interpolated", "voc2012"] = option(
        "non_interpolated",
        "headline mAP: ASL/ML-GCN non-interpolated AP or the VOC2012 interpolated envelope",
    )


@dataclass
class EmaConfig:
    enabled: bool = option(True, "keep an exponential moving average of the weights")
    decay: float = option(0.9997, "EMA decay per step", low=0, below=1)
    warmup: bool = option(False, "timm ModelEmaV3 warm-up: decay = 1 - (1 + step)^-2/3, capped at decay")


def recipe_name(default: str) -> Any:
    """The `name` field of a recipe's config: every recipe's own config redeclares it with its name as
    the default, so the class alone says which recipe it is."""
    return option(default, "training recipe (fastmlic/recipes); its keys are listed below")


@dataclass
class RecipeConfig:
    """What every recipe's config has; a recipe subclasses it with its own keys and default name, and
    registers it in RECIPE_CONFIGS under the name its training code has in RECIPES. Its docstring's
    first line is the recipe's summary in `--help`."""

    name: str = recipe_name("standard")
    # what of the paper's released checkpoints `python -m fastmlic.convert --from NAME` reads (one line for
    # its --help; the reading is the recipe's `read_released`); empty: none
    released: ClassVar[str] = ""


# recipe name -> its config class, loaded from the recipes' NAME_config.py files (fastmlic/plugins.py).
# Apart from RECIPES (fastmlic/recipes/base.py) because the configs import no torch: loading a config
# and `--help` do not wait the seconds that `import torch` takes
RECIPE_CONFIGS: Registry[type[RecipeConfig]] = Registry("recipe", "recipe.name", load=load_configs)


def recipe_config(name: str) -> RecipeConfig:
    """The default config of the recipe registered as `name`."""
    try:
        config = RECIPE_CONFIGS.lookup(name)()
    except UnknownName as e:
        raise ConfigError(str(e)) from None
    config.name = name  # the registered name, also for a recipe that reuses another's config class
    return config


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    recipe: RecipeConfig = field(default_factory=lambda: recipe_config("standard"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- type checking


def _sections(cfg_type: type = Config) -> dict[str, type]:
    return {f.name: typing.get_type_hints(cfg_type)[f.name] for f in dataclasses.fields(cfg_type)}


def _closest(name: str, valid: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if match:
        return f"; did you mean '{prefix}{match[0]}'?"
    return f"; valid: {', '.join(prefix + v for v in valid)}"


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or a ConfigError naming `key`. Ints widen to floats; nothing else converts."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value in args:
            return value
        hint = _closest(str(value), [str(a) for a in args]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: {value!r} is not one of {_describe(tp)}{hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_describe(args[0])}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r} ({type(value).__name__})")


def _field_type(cfg: Config, section: str, key: str) -> Any:
    """The declared type of `section.key` in `cfg` (the recipe section is typed by the chosen recipe)."""
    sections = _sections()
    if section not in sections:
        raise ConfigError(f"unknown config section '{section}'{_closest(section, list(sections))}")
    section_type = type(getattr(cfg, section))
    hints = {f.name: typing.get_type_hints(section_type)[f.name] for f in dataclasses.fields(section_type)}
    if key not in hints:  # a ClassVar (a recipe's `released` text) is no key either
        where = f" of recipe '{cfg.recipe.name}'" if section == "recipe" else ""
        raise ConfigError(
            f"unknown config key '{section}.{key}'{where}{_closest(key, list(hints), section + '.')}"
        )
    return hints[key]


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    tp = _field_type(cfg, section, key)
    value = _coerce(f"{section}.{key}", value, tp)
    if section == "recipe" and key == "name":
        if value != cfg.recipe.name:  # another recipe: its own keys, from their defaults
            cfg.recipe = recipe_config(value)
        return
    setattr(getattr(cfg, section), key, value)


def _name_first(items: list[tuple]) -> list[tuple]:
    """`recipe.name` before the recipe's other keys, which only exist once the recipe is chosen.
    Items end in (section, key, value)."""
    return sorted(items, key=lambda item: (item[-3], item[-2]) != ("recipe", "name"))


# --------------------------------------------------------------------------- loading


def find_config(name: str | Path) -> Path:
    """A recipe by path, or by bare name (`vg500.yaml` or `vg500`) from fastmlic/configs."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config file '{name}' not found (not a path, nor a recipe in {CONFIG_DIR}: {', '.join(known)})"
    )


def parse_overrides(args: list[str]) -> list[tuple[str, str, Any]]:
    """`--section.key=value` or `--section.key value` into (section, key, raw value)."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"cannot read '{arg}': overrides look like --section.key=value")
        if "=" in arg:
            name, raw = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            name, raw = arg[2:], args[i + 1]
            i += 1
        section, key = name.split(".", 1)
        out.append((section, key, raw))
        i += 1
    return out


def _override_value(tp: Any, raw: str) -> Any:
    """A command-line value parsed as YAML, but string fields keep the text (`--model.backbone=123`), and
    so do the items of string lists (`--data.classes=[7, 2]` names the classes '7' and '2')."""
    if tp == list[str]:
        try:
            return yaml.load(raw, Loader=yaml.BaseLoader)  # every scalar as its text
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot read {raw!r} as a list: {e}") from None
    value = _yaml(raw) if raw != "" else ""
    wants_str = tp is str or (
        typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)
    )
    if wants_str and value is not None and not isinstance(value, (str, list, dict)):
        return raw
    return value


def _file_items(cfg: str | Path | dict, source: str = "", chain: tuple[str, ...] = ()) -> list[tuple]:
    """(where, section, key, value) of a config file or mapping, after those of its `base:` file (a
    method preset names the dataset config it extends)."""
    if isinstance(cfg, dict):
        data, where = cfg, source or "config"
    else:
        path = find_config(cfg)
        try:
            data = _yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at the top level")
    items = []
    if "base" in data:
        if not isinstance(data["base"], str) or where in chain:
            raise ConfigError(f"{where}: base must name one other config file, without cycles")
        base = data["base"]
        if not isinstance(cfg, dict) and (Path(where).parent / base).is_file():  # beside the file naming it
            base = str(Path(where).parent / base)
        try:
            items = _file_items(base, chain=(*chain, where))
        except ConfigError as e:
            raise ConfigError(f"{where}: base: {e}" if where not in str(e) else str(e)) from None
    for section, values in data.items():
        if section == "base":
            continue
        if section not in _sections():
            hint = _closest(section, list(_sections()))
            raise ConfigError(f"{where}: unknown config section '{section}'{hint}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys")
        items += [(where, section, key, value) for key, value in values.items()]
    return items


def load_config(cfg: str | Path | dict | None = None, overrides: list[str] | None = None,
                source: str = "") -> Config:  # fmt: skip
    """Defaults, then `cfg` (a YAML file by path or bare name, or an already-parsed mapping such as a
    checkpoint's config; `source` names it in errors), then the command-line `overrides`; every value
    type- and range-checked. What needs the heads' and recipes' training code (whether the head fits the
    recipe, the recipe's own cross-field checks) is checked when a run is built
    (fastmlic/builder.py: check_recipe), so configs and `--help` load without torch."""
    config = Config()
    if cfg is not None:
        for where, section, key, value in _name_first(_file_items(cfg, source)):
            try:
                _apply(config, section, key, value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    for section, key, raw in _name_first(parse_overrides(overrides or [])):
        _apply(config, section, key, _override_value(_field_type(config, section, key), raw))
    validate(config)
    return config


def check_ranges(cfg: Config) -> None:
    """Every field's declared range (`option(..., low=...)`), the recipe section's included."""
    for section in _sections():
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            allowed = f.metadata.get("range")
            value = getattr(values, f.name)
            items = value if isinstance(value, list) else [value]
            if allowed is not None and value is not None and not all(allowed.allows(v) for v in items):
                raise ConfigError(f"{section}.{f.name}={value} must be {allowed.describe()}")


def validate(cfg: Config) -> None:
    """The declared ranges, then the checks across fields and items; each message names the flag to
    change."""
    check_ranges(cfg)
    d, m, t = cfg.data, cfg.model, cfg.train
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("data.mean and data.std need three values (R, G, B)")
    if not (len(d.long_side) == 2 and d.long_side[0] <= d.long_side[1]):
        raise ConfigError(f"data.long_side={d.long_side} must be [low, high] with low <= high")
    if not (len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1):
        raise ConfigError(f"data.crop_scale={d.crop_scale} must be [low, high] with 0 < low <= high <= 1")
    if len(set(d.classes)) != len(d.classes):
        duplicates = sorted({c for c in d.classes if d.classes.count(c) > 1})
        raise ConfigError(f"data.classes names {', '.join(duplicates)} more than once")
    if t.select_from == "ema" and not cfg.ema.enabled:
        raise ConfigError("train.select_from=ema needs ema.enabled=true")
    if t.result == "final" and t.patience:
        raise ConfigError("train.result=final reports the last epoch: train.patience would end training on "
                          "an epoch nobody chose; set one of them")  # fmt: skip
    if m.embed_dim % m.heads:
        raise ConfigError(f"model.embed_dim={m.embed_dim} must be divisible by model.heads={m.heads}")
    if m.pretrained and m.pretrained_path:
        raise ConfigError("set model.pretrained or model.pretrained_path, not both")


def _describe_fields(section: str, section_type: type, values=None, skip: tuple[str, ...] = ()) -> list[str]:
    hints = typing.get_type_hints(section_type)
    lines = []
    for f in dataclasses.fields(section_type):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = default if values is None else getattr(values, f.name)
        allowed = f.metadata.get("range")
        each = ", each" if typing.get_origin(hints[f.name]) is list else ""
        kind = (_describe(hints[f.name]) + (f"{each} {allowed.describe()}" if allowed else "")
                + ("" if value == default else f", default {default!r}"))  # fmt: skip
        lines.append(f"  --{section}.{f.name}={value!r}".ljust(34) + f" {kind}: {f.metadata['help']}")
    return lines


def describe(cfg: Config | None = None) -> str:
    """Every key with its type, value and help, every recipe's keys included: what `--help` prints.
    The values are `cfg`'s (what a `--cfg` and overrides resolve to; a key that differs from its
    default names the default too), else the defaults."""
    lines = []
    for section, section_type in _sections().items():
        if section == "recipe":
            continue
        lines.append(f"{section}:")
        lines += _describe_fields(section, section_type, None if cfg is None else getattr(cfg, section))
    chosen = "standard" if cfg is None else cfg.recipe.name
    lines.append(f"recipe:  (--recipe.name picks one of: {', '.join(RECIPE_CONFIGS)}; here {chosen!r})")
    for name, config_type in RECIPE_CONFIGS.items():
        lines.append(f"  {name}: {config_type.__doc__.strip().splitlines()[0]}")
        values = cfg.recipe if cfg is not None and name == chosen else None
        lines += ["  " + line for line in _describe_fields("recipe", config_type, values, skip=("name",))]
    return "\n".join(lines)


def add_help(parser) -> None:
    """`-h/--help` that prints the config keys with the values the command line resolves to: call
    `print_help_if_asked` once the config is loaded."""
    parser.add_argument("-h", "--help", action="store_true",
                        help="show this help, with the config keys and the values that --cfg and the "
                             "overrides give them, and exit")  # fmt: skip


def print_help_if_asked(parser, args, cfg: Config, cfg_name: str) -> None:
    if getattr(args, "help", False):
        parser.epilog = (f"config keys with the values of --cfg {cfg_name} and the overrides given "
                         f"(override with --section.key=value):\n" + describe(cfg))  # fmt: skip
        parser.print_help()
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """`python -m fastmlic.config [--cfg NAME.yaml] [--section.key=value ...]` prints the resolved config."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m fastmlic.config",
        description="Print a resolved fastmlic config as YAML.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("--cfg", default="digits",
                        help="preset name (fastmlic/configs) or YAML path; default: digits")  # fmt: skip
    add_help(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.cfg, rest)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print_help_if_asked(parser, args, cfg, args.cfg)
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    # the package's own module, not this copy named __main__: the recipes register in its RECIPE_CONFIGS
    from fastmlic.config import main as config_main

    config_main()
