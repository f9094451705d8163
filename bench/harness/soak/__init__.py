"""bench/soak.py's parts: requests, histories, disconnects, processes, client driver, offline checker."""
