"""Performance suite: each bench_*.py measures ratios and curves; run.py writes JSON."""
