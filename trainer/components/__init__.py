"""Pieces shared by the training scripts: config loading, checkpoints, LR schedules, metrics."""
