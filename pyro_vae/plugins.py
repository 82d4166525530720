"""Plugins: modules that register components before any config name is resolved.

A plugin is a module whose import registers priors, likelihoods, nets, model
types or objectives (``register_prior``, ``register_model``, ...). It reaches the
command line three ways:

* ``plugins = ["mypackage.components"]`` at the top of a config file, or
  ``pyro-vae train --plugin mypackage.components`` (a module name, or the path of
  a ``.py`` file). A run stores its plugins in ``config.toml`` (file paths made
  absolute), so ``pyro-vae evaluate`` and ``--resume`` import them again.
* The ``pyro_vae.plugins`` entry-point group of installed packages, loaded on
  the first registry look-up of a process::

      [project.entry-points."pyro_vae.plugins"]
      mypackage = "mypackage.components"            # a module, imported
      other = "otherpackage.plugin:register"        # or a function, called
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from importlib import metadata
from pathlib import Path

__all__ = ["load", "load_entry_points", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "pyro_vae.plugins"
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import (or call) every installed ``pyro_vae.plugins`` entry point, once per process.

    A plugin that fails to load is reported with a warning naming it, and skipped.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if callable(loaded):
                loaded()
        except Exception as err:  # a broken third-party plugin must not break every command
            warnings.warn(f"pyro_vae plugin {point.name!r} ({point.value}) failed to load and was skipped: "
                          f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)


def _is_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name or "\\" in name


def _load_file(path: Path) -> None:
    module_name = f"pyro_vae_plugin_{path.stem}"
    if sys.modules.get(module_name) is not None and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return
    if not path.is_file():
        raise ValueError(f"plugin file {str(path)!r} not found; give the path of a .py file or an importable "
                         "module name")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def load(names) -> list[str]:
    """Import each plugin (a module name or a ``.py`` path); returns them as a run stores them (paths absolute)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"plugins must be a list of module names or .py paths, got {names!r}")
    stored = []
    for name in names:
        if _is_path(name):
            path = Path(name).expanduser().resolve()
            _load_file(path)
            stored.append(str(path))
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):  # the plugin itself, not one of its imports
                raise ValueError(f"plugin {name!r} cannot be imported (no module named {err.name!r}); install "
                                 "its package, add its folder to PYTHONPATH, or give the path of its .py file"
                                 ) from err
            raise
        stored.append(name)
    return stored
