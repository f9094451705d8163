"""Central finite differences in float64, shared by the gradient-check tests (one implementation: the
``seqpred gradcheck`` module's)."""

from model.train.gradcheck import numeric_grad, rel_error

__all__ = ["numeric_grad", "rel_error"]
