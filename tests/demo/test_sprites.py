"""Sprite clips: deterministic from the generator, in range, moving, labelled; the trainer's data_fn contract."""

import pytest
import torch

from qvgen.apps.demo.sprites import (NUM_CLASSES, SpriteConfig, SpriteData, _bounce, caption_table, class_name,
                                decode_label, make_clips, render_clip)


@pytest.mark.parametrize("size", [16, 32])
def test_clips_deterministic_and_in_range(size):
    cfg = SpriteConfig(size=size)
    labels = torch.randint(0, NUM_CLASSES, (5,), generator=torch.Generator().manual_seed(size))
    a = make_clips(labels, torch.Generator().manual_seed(11), cfg)
    b = make_clips(labels, torch.Generator().manual_seed(11), cfg)
    c = make_clips(labels, torch.Generator().manual_seed(12), cfg)
    assert a.shape == (5, 3, 8, size, size) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert (a == -1.0).float().mean() > 0.5  # mostly background
    assert (a > 0.0).any()  # objects are drawn


def _centroids(clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cover = (clip.amax(dim=0) > -0.5).float()  # (F, H, W) object mask
    size = cover.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    mass = cover.flatten(1).sum(1)
    return (cover * xs).flatten(1).sum(1) / mass, (cover * ys).flatten(1).sum(1) / mass


def test_every_class_moves_in_its_direction():
    cfg = SpriteConfig(size=32, max_objects=1)
    g = torch.Generator().manual_seed(3)
    for label in range(NUM_CLASSES):
        direction = decode_label(label)[2]
        agree = 0
        for _ in range(5):
            clip = render_clip(label, g, cfg)
            assert ((clip.amax(dim=0) > -0.5).flatten(1).sum(1) > 0).all(), class_name(label)
            assert not torch.equal(clip[:, 1:], clip[:, :-1]), class_name(label)  # motion in every clip
            cx, cy = _centroids(clip)
            step = {"right": cx[1] - cx[0], "left": cx[0] - cx[1], "down": cy[1] - cy[0], "up": cy[0] - cy[1]}
            agree += int(step[direction] > 0)
        # A wall bounce during the first step can reverse a clip; most clips go the labelled way.
        assert agree >= 3, (class_name(label), agree)


def test_bounce_is_elastic_reflection():
    lo, hi = torch.tensor(2.0), torch.tensor(10.0)
    # -7 reflects off 2 to 11, then off 10 to 9.
    p = torch.tensor([2.0, 5.0, 10.0, 12.0, 19.0, 1.0, -7.0])
    assert torch.equal(_bounce(p, lo, hi), torch.tensor([2.0, 5.0, 10.0, 8.0, 3.0, 3.0, 9.0]))


def test_colour_matches_label():
    g = torch.Generator().manual_seed(0)
    for label, channel in ((0 * 16 + 0 * 4, 0), (0 * 16 + 1 * 4, 1), (1 * 16 + 2 * 4, 2)):  # red, green, blue
        clip = render_clip(label, g)
        inside = clip.amax(dim=0) > 0.5
        mean = clip[:, inside].mean(dim=1)
        assert int(mean.argmax()) == channel, class_name(label)


def test_labels_and_captions():
    names = {class_name(i) for i in range(NUM_CLASSES)}
    assert len(names) == NUM_CLASSES == 48
    assert class_name(0) == "red circle moving right"
    table = caption_table()
    assert table.shape == (NUM_CLASSES, 4, 32)
    assert torch.equal(table, caption_table())
    with pytest.raises(ValueError, match="decode_label: argument 'label'"):
        decode_label(NUM_CLASSES)
    with pytest.raises(ValueError, match="SpriteConfig: argument 'max_objects'"):
        SpriteConfig(max_objects=3)
    with pytest.raises(ValueError, match="make_clips: argument 'labels'"):
        make_clips(torch.zeros(2, 2, dtype=torch.long), torch.Generator())


def test_data_fn_contract():
    data = SpriteData(SpriteConfig(size=16), batch_size=3)
    x0, cond = data(5, torch.Generator().manual_seed(99))
    x0b, condb = data(5, torch.Generator().manual_seed(99))
    assert x0.shape == (3, 3, 8, 16, 16)
    assert cond["encoder_hidden_states"].shape == (3, 4, 32)
    assert torch.equal(x0, x0b) and torch.equal(cond["encoder_hidden_states"], condb["encoder_hidden_states"])
    _, _, labels = data.batch(torch.Generator().manual_seed(99))
    assert torch.equal(cond["encoder_hidden_states"], caption_table()[labels])
