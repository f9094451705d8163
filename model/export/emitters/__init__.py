"""Step emitters, one module per cell family, registered by cell name. May import: export.builder, model.cells.

Importing this package imports every module in it, so a new module's ``@emitter(...)`` takes effect without being
named anywhere else.
"""

import importlib
import pkgutil

from model.export.emitters.base import EMITTERS, Emitter, LayerNames, emitter

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EMITTERS", "Emitter", "LayerNames", "emitter"]
