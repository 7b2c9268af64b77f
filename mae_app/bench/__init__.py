"""The benchmarks: cases, timing and reports (tools/bench_*.py are their command lines)."""
