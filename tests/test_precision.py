"""train.amp resolved per device: auto is bf16 only where the hardware computes in it, and says why."""

from __future__ import annotations

import pytest
import torch

from fastmlic.config import Config, load_config
from fastmlic.precision import cpuinfo, resolve_amp

CPU = torch.device("cpu")
ZEN4 = {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}  # an EPYC of these machines
SKYLAKE = {"avx512f", "avx512bw", "avx512_vnni"}  # AVX-512, but bf16 only emulated by oneDNN


@pytest.mark.parametrize("flags, amp, reason", [
    (ZEN4, "bf16", "native bf16 (avx512_bf16)"),
    ({*SKYLAKE, "amx_bf16", "amx_tile"}, "bf16", "native bf16 (amx_bf16)"),
    ({"fp", "asimd", "bf16"}, "bf16", "native bf16 (bf16)"),  # Arm's Features line
    (SKYLAKE, "off", "no native bf16"),
    (set(), "off", "no native bf16"),
])  # fmt: skip
def test_auto_picks_bf16_only_on_cpus_that_compute_in_it(flags, amp, reason):
    chosen, why = resolve_amp("auto", CPU, flags)
    assert chosen == amp and reason in why and why.startswith("auto: ")


def test_an_explicit_choice_is_kept_and_fp16_off_cuda_becomes_bf16():
    assert resolve_amp("off", CPU, ZEN4) == ("off", "train.amp=off")
    assert resolve_amp("bf16", CPU, SKYLAKE) == ("bf16", "train.amp=bf16")
    amp, why = resolve_amp("fp16", CPU, ZEN4)
    assert amp == "bf16" and "loss scaling" in why


def test_auto_is_the_default_and_the_fp32_presets_stay_fp32():
    assert Config().train.amp == "auto" and load_config("digits").train.amp == "auto"
    assert load_config("sgre_mscoco").train.amp == "off"  # the official trains in fp32


def test_cpuinfo_reads_a_field_or_nothing(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512_bf16\n\nprocessor\t: 1\n")
    assert cpuinfo("model name", fake) == "Test CPU" and cpuinfo("flags", fake) == "fpu avx512_bf16"
    assert cpuinfo("flags", tmp_path / "absent") is None
