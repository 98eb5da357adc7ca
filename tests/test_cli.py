"""How commands end: our own user errors as one line and exit 2; anything else, a library's ValueError
included, with its traceback (it is a bug, and the traceback is what finds it)."""

from __future__ import annotations

import pytest
import torch

from fastmlic.cli import exit_on_user_error
from fastmlic.config import ConfigError, load_config
from fastmlic.errors import InputError, MissingInput, UserError


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def bad_key():
        load_config("digits", ["--optim.lrr=1"])

    assert exit_on_user_error(bad_key) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'optim.lrr'") and "Traceback" not in err


def test_a_value_error_raised_inside_torch_keeps_its_traceback(capsys):
    def shape_bug():
        torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(2, 3), torch.zeros(3, 2))

    with pytest.raises(ValueError, match="must be the same as input size"):
        exit_on_user_error(shape_bug)
    assert "error:" not in capsys.readouterr().err


def test_our_errors_are_still_the_builtin_kinds_callers_catch():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(InputError, ValueError) and issubclass(MissingInput, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from fastmlic.checkpoint import load_checkpoint

        load_checkpoint("/nonexistent/best.pt")


@pytest.mark.dist
def test_launch_ends_a_run_whose_ranks_fail_in_one_line_with_their_exit_code(tmp_path):
    """torchrun would print its ChildFailedError traceback after the ranks' own errors."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    launch = [sys.executable, "-m", "fastmlic.launch", "--nproc_per_node=2", "--master_port=29539"]
    result = subprocess.run([*launch, str(ROOT / "fastmlic" / "train.py"), "--cfg", "digits",
                             f"--data.shards={tmp_path / 'none'}", f"--train.out_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    # both fail on the missing shards; one may be stopped by torchrun first (143) once the other has
    assert re.fullmatch(r"launch: rank 0 exited with (2|143), rank 1 exited with (2|143); what failed is "
                        r"printed above", lines[-1]) and "exited with 2" in lines[-1], lines[-1]
    assert "error (rank " in result.stderr and "Traceback" not in result.stderr
