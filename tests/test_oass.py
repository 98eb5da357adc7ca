"""OASS (recipes/oass.py), its pure functions so far: Puzzle-CAM's tile/merge against a literal loop
form, and the four key-point strategies on hand-made CAMs with known peaks."""

from __future__ import annotations

import pytest
import torch

from fastmlic.recipes.oass import keypoints, merge, tile


def literal_tile(x, pieces):
    """Puzzle-CAM's tile_features, loop for loop: split rows, then columns, concatenate along the batch."""
    n = int(pieces**0.5)
    h, w = x.shape[2] // n, x.shape[3] // n
    return torch.cat([patch for rows in torch.split(x, h, dim=2) for patch in torch.split(rows, w, dim=3)])


@pytest.mark.parametrize("pieces", [1, 4, 9])
def test_tile_matches_puzzle_cams_order_and_merge_inverts_it_exactly(rng, pieces):
    x = torch.from_numpy(rng.normal(size=(3, 5, 6, 12))).float()
    tiles = tile(x, pieces)
    assert torch.equal(tiles, literal_tile(x, pieces))
    assert torch.equal(merge(tiles, pieces), x)
    # image b's piece p sits at row p x B + b
    assert torch.equal(tile(x, 4)[1 * 3 + 2], x[2, :, :3, 6:])


def test_tiles_refuse_what_does_not_split():
    with pytest.raises(ValueError, match="pieces=3: must be a square number"):
        tile(torch.zeros(1, 1, 4, 4), 3)
    with pytest.raises(ValueError, match="a 5 x 4 map does not split into 2 x 2"):
        tile(torch.zeros(1, 1, 5, 4), 4)
    with pytest.raises(ValueError, match="6 tiles do not make whole 4-piece images"):
        merge(torch.zeros(6, 1, 2, 2), 4)


def cams_with_peaks() -> torch.Tensor:
    """One image, 3 channels on a 5 x 6 grid: a single peak, two equal peaks, and a flat channel."""
    cams = torch.zeros(1, 3, 5, 6)
    cams[0, 0, 3, 4] = 5.0
    cams[0, 0, 1, 1] = 2.0  # a lower local maximum
    cams[0, 1, 0, 5] = 4.0
    cams[0, 1, 4, 0] = 4.0  # the same height, later in row-major order
    cams[0, 2] = 1.0  # no variation
    return cams


def test_max_and_cmax_take_the_first_peak_and_the_centre_of_a_flat_channel():
    cams = cams_with_peaks()
    assert keypoints(cams, "cmax").tolist() == [[[3.0, 4.0], [0.0, 5.0], [2.0, 2.5]]]
    assert keypoints(cams, "max").tolist() == [[[3.0, 4.0]]]  # the merged map's peak is channel 0's
    assert keypoints(cams[:, 2:], "max").tolist() == [[[2.0, 2.5]]]  # nothing but a flat channel


def test_ctopk_centres_the_k_highest_local_maxima_and_uses_all_when_fewer():
    cams = cams_with_peaks()
    points = keypoints(cams, "ctopk", k=2)
    assert points[0, 0].tolist() == [2.0, 2.5]  # (3, 4) and (1, 1)
    assert points[0, 1].tolist() == [2.0, 2.5]  # (0, 5) and (4, 0)
    assert points[0, 2].tolist() == [2.0, 2.5]  # flat: the centre
    assert keypoints(cams, "ctopk", k=1)[0, :2].tolist() == [[3.0, 4.0], [0.0, 5.0]]  # ties: row-major first
    # k larger than the number of local maxima: all of them. Two cones have exactly two local maxima (a
    # zero plateau would count every cell of it)
    rows, cols = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    high = 5 - 2 * ((rows - 3) ** 2 + (cols - 4) ** 2).sqrt()
    cones = torch.maximum(high, 2 - ((rows - 1) ** 2 + (cols - 1) ** 2).sqrt())
    assert keypoints(cones[None, None], "ctopk", k=10).tolist() == [[[2.0, 2.5]]]


def test_ctopk_w_weights_the_maxima_by_their_normalised_values():
    ground = torch.zeros(1, 1, 5, 6)
    ground[0, 0, 4, 5], ground[0, 0, 0, 0] = 4.0, 1.0  # normalised weights 1 and 0.25
    expected = [(4 * 1 + 0 * 0.25) / 1.25, (5 * 1 + 0 * 0.25) / 1.25]
    torch.testing.assert_close(keypoints(ground, "ctopk_w", k=2)[0, 0], torch.tensor(expected))
    # unweighted, the same two maxima meet halfway
    assert keypoints(ground, "ctopk", k=2)[0, 0].tolist() == [2.0, 2.5]


def test_keypoints_refuse_unknown_strategies_and_shapes():
    with pytest.raises(ValueError, match="keypoint strategy 'top': use one of max, cmax, ctopk, ctopk_w"):
        keypoints(torch.zeros(1, 1, 2, 2), "top")
    with pytest.raises(ValueError, match=r"cams must be \[B, C, H, W\]"):
        keypoints(torch.zeros(2, 2), "max")
