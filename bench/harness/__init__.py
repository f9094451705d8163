"""Helper modules of the benchmarks (not runnable): export_floor, serve/ (serve_load), soak/ (soak)."""
