"""Authentication (bearer tokens, principals) and TLS credentials. May import: cross-cutting modules only."""
