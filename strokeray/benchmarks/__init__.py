"""Benchmarks: each compares strokeray against baselines in the same run and prints the ratios."""
