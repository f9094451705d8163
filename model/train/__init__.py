"""Training: loop, budget, stopping, shards, checkpoints, evaluation, train/eval commands. May import: core, data."""
