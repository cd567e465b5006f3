"""Meta-learning algorithms, one per module, all returning an `Algorithm`."""

from metalearn.algorithms.base import Algorithm
from metalearn.algorithms.maml import make_maml

__all__ = ["Algorithm", "make_maml"]
