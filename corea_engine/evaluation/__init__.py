"""Datasets, answer checking, metrics, threshold calibration and reports."""
