"""Meta-learning algorithms, one per module, all returning an `Algorithm`.

Every module here registers its factory in `ALGORITHMS` (signature
`make_<algo>(model, task, inner_lr, inner_steps, *, options)`); importing this
package imports them all.
"""

import importlib
import pkgutil

from metalearn.algorithms.base import ALGORITHMS, Algorithm, MetaGradient

for _module in pkgutil.iter_modules(__path__):  # each algorithm registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

from metalearn.algorithms.anil import make_anil  # noqa: E402
from metalearn.algorithms.maml import make_maml  # noqa: E402
from metalearn.algorithms.metasgd import make_metasgd  # noqa: E402
from metalearn.algorithms.pretrained import make_pretrained  # noqa: E402
from metalearn.algorithms.protonet import make_protonet  # noqa: E402
from metalearn.algorithms.reptile import make_reptile  # noqa: E402
from metalearn.algorithms.sgd import make_sgd_baseline  # noqa: E402

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "MetaGradient",
    "make_anil",
    "make_maml",
    "make_metasgd",
    "make_pretrained",
    "make_protonet",
    "make_reptile",
    "make_sgd_baseline",
]
