"""A registry of specs discovered by package, shared by the format registry (`export/`) and the
task registry (`tasks/`): each sub-package of the discovered package registers its spec on import,
so listing imports the registration modules and nothing heavier."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    def __init__(self, package: str, kind: str, error: type[Exception]):
        self.package, self.kind, self.error = package, kind, error
        self._specs: dict[str, Spec] = {}

    def register(self, name: str, spec: Spec) -> Spec:
        if name in self._specs and self._specs[name] != spec:
            raise self.error(f"{self.kind} {name!r} is registered twice")
        self._specs[name] = spec
        return spec

    def specs(self) -> list[Spec]:
        """Every registered spec, after importing each sub-package of the package once."""
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
                importlib.import_module(f"{self.package}.{info.name}")
        return list(self._specs.values())
