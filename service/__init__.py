"""seqpred serving: a gRPC streaming service that keeps each session's recurrent state on the server.

Floors, top to bottom (``tests/test_layering.py`` enforces them; a package imports only floors below its own):
``cli``, ``healthcheck``, ``gen_proto`` -> ``server`` (composition root) -> ``api`` (protocol fronts) -> ``engine``
(transport-free core, batcher) -> ``durability`` -> ``store``, ``security``, ``scoring`` -> ``client``, ``runtime``
-> ``settings``, ``metrics`` -> ``errors``, ``_proto``; then ``model`` below all of them.
"""
