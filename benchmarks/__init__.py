"""radinfer benchmarks: ``python -m benchmarks [--quick]``; see benchmarks/RESULTS.md."""
