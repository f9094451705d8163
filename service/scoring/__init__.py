"""Offline batch scoring, local or on Ray: command, scorer, inputs, records, top-k. May import: model, cross-cutting."""
