"""The checkpoint schema: format version, and weights loaded by class name."""

import pytest
import torch
from torch import nn

from fastmlic.checkpoint import Checkpoint, TrainState, load_checkpoint, load_weights


class PerClass(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.shared = nn.Linear(3, 4)
        self.rows = nn.Parameter(torch.arange(classes * 2, dtype=torch.float32).view(classes, 2))


def test_a_checkpoint_round_trips_with_its_format_version(tmp_path):
    ckpt = Checkpoint("last", ["a", "b"], {"x": {"y": 1}}, {"w": torch.ones(2)}, state=TrainState(epoch=3))
    torch.save(ckpt.to_dict(), tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert back.state.epoch == 3 and back.classes == ["a", "b"]
    assert torch.equal(back.model["w"], torch.ones(2))
    raw = ckpt.to_dict()
    raw["version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future.pt: checkpoint format version 99, this fastmlic reads"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: not a fastmlic checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut.pt: not a readable fastmlic checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_per_class_rows_are_loaded_by_class_name():
    source = PerClass(3)  # classes a, b, c: rows [0, 1], [2, 3], [4, 5]
    target = PerClass(4)
    target.rows.data.fill_(-1)
    notes = load_weights(target, source.state_dict(), ["a", "b", "c"], ["c", "x", "a", "y"], ["rows"], "init",
                         strict=False)  # fmt: skip
    assert target.rows.tolist() == [[4, 5], [-1, -1], [0, 1], [-1, -1]]
    torch.testing.assert_close(target.shared.weight, source.shared.weight)
    assert notes == ["init: 2 classes only here (x, y); 1 classes only in the checkpoint (b); "
                     "those keep their initialisation"]  # fmt: skip


def test_strict_loading_names_the_classes_that_differ():
    with pytest.raises(ValueError, match=r"resume: 2 classes, the shards have 2; 1 classes only here \(z\); "
                                         r"1 classes only in the checkpoint \(b\)"):  # fmt: skip
        load_weights(PerClass(2), PerClass(2).state_dict(), ["a", "b"], ["a", "z"], ["rows"], "resume")
    with pytest.raises(ValueError, match="the same classes in another order"):
        load_weights(PerClass(2), PerClass(2).state_dict(), ["a", "b"], ["b", "a"], ["rows"], "resume")
    with pytest.raises(ValueError, match="none in common"):
        load_weights(PerClass(2), PerClass(2).state_dict(), ["a", "b"], ["x", "y"], ["rows"], "i",
                     strict=False)  # fmt: skip
