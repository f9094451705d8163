"""Training: loop, optimisers, batch shards, LSTM fast path, checkpoints, evaluation. May import: model core, data."""
