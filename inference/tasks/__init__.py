"""Clinical tasks. ``TASKS[name]`` is the Task class defined in ``inference/tasks/<name>.py``.

A task module is imported the first time its name is looked up, so a bundle only pays for (and can only be
broken by) the task it uses. The module must define exactly one class whose ``name`` class attribute equals
the module name and that has a ``run`` method (see ``inference.tasks.base.Task``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping

from inference.tasks.base import Task

# Modules in this package that are helpers of tasks, not tasks.
_NOT_TASKS = frozenset({"base", "bone_age_reference", "mammography_views"})


class _TaskTable(Mapping[str, type[Task]]):
    def __init__(self) -> None:
        self._loaded: dict[str, type[Task]] = {}

    def _names(self) -> list[str]:
        return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_TASKS)

    def __getitem__(self, name: str) -> type[Task]:
        if name not in self._loaded:
            if name not in self._names():
                raise KeyError(f"Unknown task {name!r}; known tasks: {', '.join(self._names())}.")
            module = importlib.import_module(f"{__name__}.{name}")
            classes = [
                obj
                for obj in vars(module).values()
                if isinstance(obj, type)
                and obj.__module__ == module.__name__
                and getattr(obj, "name", None) == name
                and callable(getattr(obj, "run", None))
            ]
            if len(classes) != 1:
                raise KeyError(
                    f"inference/tasks/{name}.py must define exactly one Task class with name = {name!r}."
                )
            self._loaded[name] = classes[0]
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


TASKS: Mapping[str, type[Task]] = _TaskTable()
