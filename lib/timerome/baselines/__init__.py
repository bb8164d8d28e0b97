"""Baselines of Table I: training-time unlearning, inference-time steering and weight editors, one module each."""
