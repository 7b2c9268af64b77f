"""mae_app: the application layer. What the tools do, as importable code: reading and reporting
runs, running plans, the demo's recipe, the demo data, the classification probes, reconstruction
pictures, the FLOP counter and the environment check (the benchmarks are their own package,
`benchmarks`). Built on `mae_core` and the `detection` / `segmentation` adapters;
`tools/*.py` are argparse shells over it (see docs/architecture.md)."""
