"""Evaluation: benchmarks, graders, greedy and test-time-scaling generation, judge accuracy, step statistics."""
