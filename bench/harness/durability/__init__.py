"""bench/durability.py's helpers: the SQLite variant of the local session log it measures against the product's."""
