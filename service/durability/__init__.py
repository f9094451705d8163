"""Durable sessions: hooks, local log (format, writer, recovery), Redis hooks. May import: store and below."""
