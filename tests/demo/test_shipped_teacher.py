"""The shipped demo teacher: its key is the default config's, it loads without training, and --retrain skips it."""

import torch

from qvgen.apps.demo.teacher import SHIPPED, TeacherConfig, get_teacher, shipped_key


def test_default_config_loads_the_shipped_teacher(tmp_path):
    cfg = TeacherConfig()
    assert shipped_key() == cfg.key(), "qvgen/apps/demo/assets/teacher was built from another TeacherConfig"
    model, info = get_teacher(cfg, "cpu", str(tmp_path))
    assert info["cached"] and info["shipped"] and info["path"] == str(SHIPPED)
    assert not any(tmp_path.iterdir())  # nothing trained or cached
    assert sum(p.numel() for p in model.parameters()) * 4 <= 4 * 2**20  # a few MB at most
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_other_config_does_not_use_the_shipped_file(tmp_path):
    cfg = TeacherConfig(steps=2, batch_size=2, num_layers=1)
    _, info = get_teacher(cfg, "cpu", str(tmp_path))
    assert not info["cached"] and "shipped" not in info and info["path"] != str(SHIPPED)
