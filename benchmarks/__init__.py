"""Measured comparisons. Run as ``python -m benchmarks.NAME [--json]``; each prints one
JSON object as its last line. Results that matter are recorded in RESULTS.md."""
