"""Probe features: static dataset descriptors, LoRA probe dynamics, HF Trainer callback."""
