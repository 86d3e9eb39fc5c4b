"""Synthetic experiments: the noisy quadratic model and synthetic generators."""
