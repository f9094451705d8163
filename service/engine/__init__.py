"""The transport-free core: requests, validation, sessions, batcher, jobs. May import: durability and below."""
