"""mae_app: the application layer. What the tools do, as importable code: reading and reporting
runs, running plans, the benchmarks, the demo's recipe, the classification probes, the demo data
and the environment check. Built on `mae_core` and the `detection` / `segmentation` adapters;
`tools/*.py` are argparse shells over it (see docs/architecture.md)."""
