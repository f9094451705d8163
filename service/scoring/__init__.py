"""Offline batch scoring: command, scorer, inputs, records, top-k. May import: model, cross-cutting modules."""
