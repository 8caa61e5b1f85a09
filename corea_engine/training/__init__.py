"""Calibration training: GRPO with the COREA confidence reward (TRL), its task and its rewards.

tasks.py: generated arithmetic tasks (arithmetic, graded) with fixed held-out splits and a checker.
rewards.py: the reward functions (format, correctness, group calibration, per-sample Brier, RLCR)
and the presets corea / rlcr / coca. warm.py: the supervised-calibration warm start.
grpo.py: the GRPOTrainer run (CoCA's segmented credit as a subclass) and the safetensors export. evaluate.py: before/after metrics
through the runtime. Heavy imports (torch, trl, datasets) happen inside those modules.
"""
