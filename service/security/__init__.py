"""Authentication (bearer tokens, principals), TLS credentials, RPC concurrency limits by kind of traffic.
May import: cross-cutting modules only."""
