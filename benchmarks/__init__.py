"""Device-efficiency benchmarks (run as ``python -m benchmarks.NAME``); see docs/benchmarks.md."""
