"""Chain a recipe's stages as ordinary runs, resumably:

    python -m fastmlic.pipeline --cfg PRESET [--stage NAME ...] [--status] [--section.key=value ...]

A recipe whose result takes more than one training run (part teachers, then a student) lists its stages
(`Recipe.stages`). Each is a training run in its own run folder under PIPELINE = train.out_dir /
train.name (default: the preset's file name), or a step that writes files into PIPELINE. A stage runs
once the stages it needs are done. The same command again goes on where the last one stopped: a
finished run is skipped (its summary.json says so), an interrupted one resumes from its newest
checkpoint, a step whose files exist is skipped. `--stage NAME` (repeatable) runs only those stages,
e.g. every teacher on its own GPU or node at the same time; `--status` lists the stages and does
nothing else. Overrides apply to the preset, so to every stage derived from it. Under `torchrun`
every run uses all processes.

The summary lists each run's best mAP on its own classes beside the final run's mAP on those classes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import RECIPE_CONFIGS, ConfigError, add_help, describe, load_config, print_help_if_asked
from .errors import InputError

if TYPE_CHECKING:  # the recipes' code imports torch, which `--help` does not wait for
    from .recipes.base import Stage

# --------------------------------------------------------------------------- state on disk


RESULT_MISSING = "result gone"


def stage_status(stage: Stage) -> str:
    """'done', 'interrupted' (a run with a checkpoint that has not finished), 'to do', or RESULT_MISSING
    (a run that finished, one of whose outputs has been deleted since: it is trained again)."""
    from .run import finished, resumable  # imports torch: not needed for --help

    present = all(p.is_file() for p in stage.outputs)
    if stage.make is not None:
        return "done" if present else "to do"
    if finished(stage.folder):
        return "done" if present else RESULT_MISSING
    return "interrupted" if resumable(stage.folder) else "to do"


def missing_outputs(stage: Stage, root: Path) -> str:
    return ", ".join(str(under(p, root)) for p in stage.outputs if not p.is_file())


def set_aside(folder: Path) -> Path:
    """Rename a run folder whose result is gone to a free FOLDER.result-gone[-N], so the stage can run
    again in its place and nothing it held is lost."""
    target, n = folder.with_name(f"{folder.name}.result-gone"), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.result-gone-{n}")
    folder.rename(target)
    return target


def best_class_ap(folder: Path, summary: dict) -> dict[str, float]:
    """Per-class AP of a run's best weights (the epoch and weights that best.pt holds), by class name,
    from metrics.jsonl (its last record of that epoch: a resumed epoch was recorded again)."""
    best = summary["best"]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch" and r["epoch"] == best["epoch"]]
    if not epochs or f"{best['source']}_ap" not in epochs[-1]:
        return {}
    return dict(zip(summary["classes"], epochs[-1][f"{best['source']}_ap"], strict=True))


def under(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path


def summary_lines(stages: list[Stage], root: Path, ran: list[str]) -> list[str]:
    """The stage table: status, classes, best mAP, and the final run's mAP on each run's classes."""
    from .run import read_summary

    runs = [(s, read_summary(s.folder)) for s in stages if s.make is None]
    final, final_summary = runs[-1] if runs else (None, None)
    final_ap = best_class_ap(final.folder, final_summary) if final_summary else {}
    there = f"{final.name}'s" if final else ""
    lines = [f"{'stage':<12} {'status':<12} {'classes':>7}  {'mAP':>7}  {there:>9}  {'epochs':>6}  folder"]
    for stage in stages:
        status = "ran" if stage.name in ran and stage_status(stage) == "done" else stage_status(stage)
        if stage.make is not None:
            files = ", ".join(str(under(p, root)) for p in stage.outputs)
            lines.append(f"{stage.name:<12} {status:<12} {'':>7}  {'':>7}  {'':>9}  {'':>6}  {files}")
            continue
        folder = under(stage.folder, root)
        s = read_summary(stage.folder)
        if s is None:
            lines.append(f"{stage.name:<12} {status:<12} {'-':>7}  {'-':>7}  {'-':>9}  {'-':>6}  {folder}")
            continue
        aps = [final_ap[c] for c in s["classes"] if c in final_ap]
        on_its = f"{np.nanmean(aps):.4f}" if stage is not final and aps and np.isfinite(aps).any() else ""
        lines.append(f"{stage.name:<12} {status:<12} {len(s['classes']):>7}  {s['best']['mAP']:>7.4f}  "
                     f"{on_its:>9}  {s['epochs']:>6}  {folder}")  # fmt: skip
    for stage in stages:
        if stage_status(stage) == RESULT_MISSING:
            gone = missing_outputs(stage, root)
            lines.append(f"{stage.name}: its run finished, but {gone} is gone: the pipeline trains it again "
                         f"(its folder is kept beside, as {stage.folder.name}.result-gone)")  # fmt: skip
    if final_summary:
        lines += [f"mAP: each run's best weights on its own classes; {there}: {final.name}'s best weights on "
                  f"the same classes",
                  f"evaluate: python -m fastmlic.evaluate --ckpt {final.folder / 'best.pt'}"]
    return lines


# --------------------------------------------------------------------------- running


# a stage's folder is the pipeline's to choose: these overrides never reach a stage as given
FOLDER_KEYS = {("train", "out_dir"), ("train", "name")}


def overrides_not_taken(stage_cfg, cfg, overrides: list[str]) -> list[str]:
    """The command line's `--section.key=value` (which `cfg`, the preset's config, holds) that a stage's
    config does not hold: a recipe gives that stage its own value (a first stage that takes its epochs
    from its own preset) or the stage's recipe has no such key. Each with what the stage keeps."""
    from .config import parse_overrides

    notes = []
    for section, key, raw in parse_overrides(overrides):
        if (section, key) in FOLDER_KEYS or section == "recipe":  # the recipe's keys make the stages
            continue
        stage_section = getattr(stage_cfg, section)
        if not hasattr(stage_section, key):
            notes.append(f"--{section}.{key}={raw} (recipe {stage_cfg.recipe.name} has no such key)")
        elif (kept := getattr(stage_section, key)) != getattr(getattr(cfg, section), key):
            notes.append(f"--{section}.{key}={raw} (it keeps {section}.{key}={kept!r})")
    return notes


def run_stage(stage: Stage, dist, cfg, overrides: list[str]) -> dict | None:
    """Run one stage here; a training run resumes from its newest checkpoint when it has one. Says which
    of the command line's overrides the stage does not take."""
    from .distributed import barrier
    from .run import resumable
    from .train import train_run

    if stage.make is not None:
        if dist.is_main:
            stage.make()
        barrier(dist.world_size)
        return None
    config = stage.config()
    if dist.is_main and (ignored := overrides_not_taken(config, cfg, overrides)):
        print(f"  note: stage {stage.name} does not take " + "; ".join(ignored) + ": its recipe sets "
              "them for this stage (from its own preset or file: see --help)", flush=True)  # fmt: skip
    summary = train_run(config, dist, stage.folder if resumable(stage.folder) else None)
    barrier(dist.world_size)  # rank 0 has written summary.json before any rank checks the next stage's needs
    return summary


PROG = "python -m fastmlic.pipeline"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cfg", help="preset name (fastmlic/configs) or YAML path (required)")
    p.add_argument("--stage", action="append", metavar="NAME", help="run only this stage (repeatable)")
    p.add_argument("--status", action="store_true", help="list the stages and their state, run nothing")
    add_help(p)
    args, overrides = p.parse_known_args(argv)
    if args.cfg is None:
        if args.help:  # the values depend on the preset: the defaults, and how to see a preset's
            p.epilog = ("config keys with their defaults (pass --cfg PRESET with --help for the values it "
                        "gives them; override with --section.key=value):\n" + describe())  # fmt: skip
            p.print_help()
            raise SystemExit(0)
        p.error("--cfg is required")
    if args.help:
        cfg = load_config(args.cfg, overrides)
        how = inspect.getdoc(RECIPE_CONFIGS.lookup(cfg.recipe.name)).partition("\n")[2].strip()
        if how:  # the recipe's own word on its stages (its config's docstring: no torch to import)
            p.description += f"\nRecipe {cfg.recipe.name} ({args.cfg}):\n{how}\n"
        print_help_if_asked(p, args, cfg, args.cfg)
    return args, overrides


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    from .builder import check_recipe  # torch: after `--help`
    from .distributed import barrier, cleanup, init_distributed
    from .preemption import Preempted
    from .recipes.base import RECIPES

    cfg = load_config(args.cfg, overrides)
    check_recipe(cfg)  # the preset's; each stage's run checks its own config when it is built
    root = Path(cfg.train.out_dir) / (cfg.train.name or Path(args.cfg).stem)
    stages = RECIPES.lookup(cfg.recipe.name).stages(cfg, root)
    by_name = {s.name: s for s in stages}
    unknown = [n for n in args.stage or [] if n not in by_name]
    if unknown:
        raise ConfigError(f"--stage {', '.join(unknown)}: the stages of {args.cfg} are {', '.join(by_name)}")
    chosen = [s for s in stages if s.name in (args.stage or by_name)]
    ran: list[str] = []
    if args.status:
        print("\n".join(summary_lines(stages, root, ran)))
        return {"root": str(root), "stages": {s.name: stage_status(s) for s in stages}}
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    stopped = None
    for i, stage in enumerate(chosen, 1):
        status = stage_status(stage)
        if status == "done":
            if dist.is_main:
                print(f"[{i}/{len(chosen)}] {stage.name}: done already ({stage.folder}), skipped", flush=True)
            continue
        missing = [n for n in stage.needs if stage_status(by_name[n]) != "done"]
        if missing:
            first = " ".join(f"--stage {n}" for n in missing)
            raise InputError(f"stage {stage.name} needs {', '.join(missing)} first: run {PROG} --cfg "
                             f"{args.cfg} {first} (or leave out --stage)")  # fmt: skip
        if status == RESULT_MISSING:
            if dist.is_main:
                kept = set_aside(stage.folder)
                gone = missing_outputs(stage, root)
                print(f"[{i}/{len(chosen)}] {stage.name}: finished, but {gone} is gone; its folder is now "
                      f"{kept}, and the stage trains again", flush=True)  # fmt: skip
            barrier(dist.world_size)
        if dist.is_main:
            what = "resuming" if status == "interrupted" else "running"
            print(f"[{i}/{len(chosen)}] {stage.name}: {what} ({stage.folder})", flush=True)
        try:
            summary = run_stage(stage, dist, cfg, overrides)
        except Preempted:  # the stage's run has said where it saved; the pipeline continues from there
            if dist.is_main:
                command = " ".join(sys.argv[1:] if argv is None else argv)
                print(f"or continue the pipeline: {PROG} {command}", flush=True)
            raise
        ran.append(stage.name)
        if summary is not None and not summary["finished"]:
            stopped = stage.name
            break
    lines = summary_lines(stages, root, ran)
    if stopped:
        lines.append(f"stage {stopped} stopped before its last epoch (train.stop_after): run the same "
                     f"command to continue")  # fmt: skip
    if dist.is_main:
        rule = "=" * min(100, max(len(line) for line in lines))
        title = f"pipeline {root}: recipe {cfg.recipe.name}, {len(stages)} stages (folders below it)"
        print("\n".join([rule, title, *lines, rule]))
    cleanup(synchronize=True)
    return {"root": str(root), "stages": {s.name: stage_status(s) for s in stages}, "ran": ran}


if __name__ == "__main__":
    from .cli import exit_on_user_error

    sys.exit(exit_on_user_error(main))
