"""Calibration training: GRPO with the COREA confidence reward (TRL), its task and its rewards.

tasks.py: generated arithmetic of graded difficulty with a fixed held-out split and a checker.
rewards.py: the reward functions (format, correctness, group calibration, per-sample Brier).
grpo.py: the GRPOTrainer run and the safetensors export. evaluate.py: before/after metrics
through the runtime. Heavy imports (torch, trl, datasets) happen inside those modules.
"""
