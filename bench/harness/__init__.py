"""Helper modules of the benchmarks (not runnable): export_floor, serve/ (serve_load), soak/ (soak), durability/
(durability: the SQLite variant of the session store, its costs and the damage probe)."""
