"""Evaluation: generation metrics, C-Eval accuracy, backdoor probes, tuned vs base."""
