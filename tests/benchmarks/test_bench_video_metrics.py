"""Motion and temporal-consistency metrics of the quality study: known inputs, known outputs."""

import math

import pytest
import torch

from benchmarks.quality.video_metrics import (foreground_centroids, frame_difference_energy, motion_ratio,
                                              temporal_consistency, trajectory_error)


def _moving_dot(batch: int, frames: int, size: int, start: int, step: int, row: int = 3) -> torch.Tensor:
    """Background -1, one white pixel at (row, start + f * step) in frame f."""
    x = -torch.ones(batch, 3, frames, size, size)
    for f in range(frames):
        x[:, :, f, row, start + f * step] = 1.0
    return x


def test_frame_difference_energy_static_is_zero_and_dot_is_exact():
    static = torch.rand(2, 3, 4, 5, 7) * 2 - 1
    static[:, :, 1:] = static[:, :, :1]
    assert torch.equal(frame_difference_energy(static), torch.zeros(2, dtype=torch.float64))
    # A moving dot changes 2 pixels per frame pair by 2 in each of 3 channels: 2 * 3 * 4 = 24 per pair,
    # averaged over C * (F-1) * H * W elements.
    x = _moving_dot(1, 5, 9, start=0, step=2)
    expected = 24 * 4 / (3 * 4 * 9 * 9)
    assert frame_difference_energy(x).item() == pytest.approx(expected, rel=1e-12)  # fp64 sums of small ints


def test_motion_ratio_compares_energies():
    fast, slow = _moving_dot(2, 4, 9, 0, 2), _moving_dot(2, 4, 9, 0, 1)
    assert motion_ratio(fast, fast) == pytest.approx(1.0, abs=1e-6)  # eps 1e-8 / energy ~0.2 in the denominator
    assert motion_ratio(fast, slow) == pytest.approx(1.0, abs=1e-6)  # both move one pixel per frame pair
    static = fast[:, :, :1].repeat(1, 1, 4, 1, 1)
    assert motion_ratio(static, fast) == 0.0


def test_centroids_follow_the_dot_and_empty_frame_gets_centre():
    x = _moving_dot(1, 3, 8, start=1, step=3, row=2)
    c = foreground_centroids(x)
    assert torch.allclose(c[0], torch.tensor([[2.0, 1.0], [2.0, 4.0], [2.0, 7.0]], dtype=torch.float64))
    empty = -torch.ones(1, 3, 2, 6, 6)
    assert torch.equal(foreground_centroids(empty), torch.full((1, 2, 2), 2.5, dtype=torch.float64))


def test_trajectory_error_is_pixel_distance():
    a = _moving_dot(1, 4, 12, start=0, step=1, row=2)
    b = _moving_dot(1, 4, 12, start=3, step=1, row=6)  # 3 columns right, 4 rows down -> distance 5
    assert trajectory_error(a, b) == pytest.approx(5.0, abs=1e-9)  # exact centroids of single pixels
    assert trajectory_error(a, a) == 0.0


def test_temporal_consistency_known_values():
    g = torch.Generator().manual_seed(7)
    frame = torch.rand(1, 3, 1, 5, 6, generator=g)
    same = frame.repeat(1, 1, 3, 1, 1)
    assert temporal_consistency(same) == pytest.approx(1.0, abs=1e-12)
    flip = torch.cat([frame, -frame + 2 * frame.mean()], dim=2)  # centred frames are exact negatives
    assert temporal_consistency(flip) == pytest.approx(-1.0, abs=1e-12)
    flat = torch.full((2, 3, 3, 4, 4), 0.5)
    assert temporal_consistency(flat) == 1.0
    noise = torch.rand(4, 3, 6, 8, 8, generator=g)
    assert -1.0 <= temporal_consistency(noise) <= 1.0 and not math.isnan(temporal_consistency(noise))


@pytest.mark.parametrize("fn", [frame_difference_energy, temporal_consistency])
def test_bad_clips_are_rejected(fn):
    with pytest.raises(ValueError, match="F >= 2"):
        fn(torch.zeros(1, 3, 1, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.zeros(1, 3, 2, 4, 4, dtype=torch.int64))


def test_pair_shape_mismatch():
    with pytest.raises(ValueError, match="shape of a"):
        trajectory_error(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 3, 3, 4, 4))
