"""Protocol fronts: the seqpred.v1 gRPC servicer over the engine, and the interceptor that observes it (request ids,
metrics, access log, traces). May import: engine and every floor below."""
