"""The one registry of methods, by name.

A method file defines a `Method` subclass and decorates it with `@register("name")`; the
name is the string used in config.yaml, the MLflow tag, the results path and the table row.
Importing this package imports every method module so the registry is complete.
"""
import importlib
import pkgutil

METHODS = {}


def register(name):
    def deco(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice ({METHODS[name].__module__} and {cls.__module__})")
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def get(name):
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}: known methods are {', '.join(sorted(METHODS))}")
    return METHODS[name]


for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")
