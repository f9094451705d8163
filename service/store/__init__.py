"""Session stores: interface, in-memory, Redis, state codec. May import: runtime, cross-cutting modules."""
