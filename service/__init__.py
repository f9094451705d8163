"""seqpred serving: a gRPC streaming service that keeps each session's recurrent state on the server.

Layers, from the wire inward: ``servicer`` (thin gRPC handlers) -> ``engine`` (transport-free request logic) ->
``batcher`` (cross-session micro-batching) -> ``sessions`` (the state store) and ``runtime`` (onnxruntime).
"""
