"""Protocol fronts: the seqpred.v1 gRPC servicer over the engine. May import: engine and every floor below."""
