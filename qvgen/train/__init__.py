"""Distillation QAT: objectives, optimizer groups, atomic checkpoints, metrics and the trainer."""

from qvgen.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from qvgen.train.config import TrainConfig
from qvgen.train.data import random_data_fn, step_generator
from qvgen.train.distill import Distiller
from qvgen.train.metrics import MetricsLog
from qvgen.train.objectives import FlowMatching, NoisyBatch, VPrediction, ddpm_alphas_cumprod, objective_for
from qvgen.train.optim import build_optimizer, build_scheduler, clip_gradients, param_groups

__all__ = [
    "Distiller", "FlowMatching", "MetricsLog", "NoisyBatch", "TrainConfig", "VPrediction", "build_optimizer",
    "build_scheduler", "clip_gradients", "ddpm_alphas_cumprod", "find_checkpoint", "load_checkpoint",
    "objective_for", "param_groups", "random_data_fn", "save_checkpoint", "step_generator",
]
