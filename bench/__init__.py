"""Benchmarks: each prints its figures as ratios against hand-written SQL measured in the same run."""
