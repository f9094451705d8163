"""Data: tokenizers, corpora, synthetic tasks, token streams. May import: model.errors."""
