"""bench/serve_load.py's parts: echo/stub/floor servers, processes, load client, memory probe, report."""
