"""The kernels as the GPU would run them, checked without one: each variant the launchers pick is
compiled for sm_90 by the Triton installed here and ptxas reports its registers, spills and shared
memory (benchmarks/kernel_resources.py, run in a process of its own: the tests' Triton interprets)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmarks.kernel_resources import SM90_SHARED_LIMIT


@pytest.fixture(scope="module")
def variants():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = ROOT / "benchmarks" / "kernel_resources.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT)  # fmt: skip
    if done.returncode != 0 and "ptxas" in done.stderr and "No such file" in done.stderr:
        pytest.skip("this Triton ships no ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_every_default_tile_compiles_for_sm90_without_spills(variants):
    kinds = {(v["kernel"], v["dtype"]) for v in variants}
    assert len(kinds) == 8  # SupCon and ASL, forward and backward, fp32 and bf16
    assert len([v for v in variants if v["kernel"].startswith("_supcon")]) == 16
    for v in variants:
        assert v["spill bytes"] == 0, v
        assert v["shared KB"] * 1024 <= SM90_SHARED_LIMIT, v
        assert v["registers"] <= 255, v


def test_supcon_streams_a_wide_embedding_in_slices(variants):
    widths = {(v["dtype"], v["variant"].split()[0]) for v in variants if v["kernel"].startswith("_supcon")}
    assert {("bf16", "D=128"), ("bf16", "D=392"), ("fp32", "D=64"), ("fp32", "D=200")} == widths
    for v in variants:
        if v["kernel"].startswith("_supcon"):  # fp32 inputs use three TF32 products on the tensor cores
            assert v["variant"].endswith("native" if v["dtype"] == "bf16" else "tf32x3"), v


def test_asl_loads_contiguous_inputs_as_vectors(variants):
    for v in variants:
        if v["kernel"].startswith("_asl"):
            assert "contiguous" in v["variant"] and v["vector loads"] > 0, v

