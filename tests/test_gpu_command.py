"""benchmarks/gpu.py, the one command a GPU machine runs first: its --quick mode on this CPU."""

import subprocess
import sys

from conftest import ROOT


def test_the_gpu_command_runs_every_section_on_the_cpu_in_quick_mode(tmp_path):
    """benchmarks/gpu.py is what a GPU machine runs first; here its --quick mode keeps it working."""
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    for section in ("ceilings", "gpu tests", "loss kernels bf16", "shards", "input side",
                    "train resnet10t 32px eager"):  # fmt: skip
        assert f"| {section} | ok |" in text, section
    assert "## Input rates beside the training steps" in text and "compute ceiling" in text
    assert {p.name.split("-")[0] for p in tmp_path.glob("*.jsonl")} == {"loss_kernels", "pipeline",
                                                                        "train_throughput"}  # fmt: skip


def test_only_runs_the_named_sections_and_a_wrong_name_lists_them(tmp_path):
    """After a fix on the GPU machine, `--only` measures again just what it changed."""
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run([*command, "--only", "gpu"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in (tmp_path / "results.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| section")]  # fmt: skip
    assert [[cell.strip() for cell in row] for row in rows] == [["gpu tests", "ok"]]  # no shards made either
    wrong = subprocess.run([*command, "--only", "gpu,trian"], capture_output=True, text=True, cwd=ROOT)
    assert wrong.returncode == 2 and "--only 'trian' names no section" in wrong.stderr
    assert "train resnet10t 32px eager" in wrong.stderr
