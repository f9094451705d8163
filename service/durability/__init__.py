"""Durable sessions: hooks, local log (records, snapshots, writer, replay, recovery, salvage), Redis hooks.
May import: store and below."""
