"""Plugins: the modules a config names (reward.plugins, model.plugins), imported once per
process before what they register is looked up."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from fastvideo_grpo.config import ConfigError

_LOADED_FILES: set[str] = set()


def import_plugins(plugins: list[str], key: str, registry: dict) -> None:
    """Import each of `plugins` (config key `key`: a module name, or the path of a .py file)
    once per process; importing it adds entries to `registry`."""
    for i, plugin in enumerate(plugins):
        try:
            if plugin.endswith(".py") or "/" in plugin:
                _import_file(Path(plugin).resolve(), f"{key.split('.')[0]}_plugin:", registry)
            else:
                importlib.import_module(plugin)
        except Exception as e:
            raise ConfigError(f"{key}[{i}]: importing {plugin!r} failed: {type(e).__name__}: {e}") from e


def _import_file(path: Path, prefix: str, registry: dict) -> None:
    # Named by its path: two plugin files of one name are two modules, and a second load
    # (the trainer checks the config, then builds the scorer) finds the first.
    # Loaded files are remembered here, not only in sys.modules, which code that imports
    # and unloads modules may prune while the registry keeps their entries.
    name = f"{prefix}{path}"
    if name in sys.modules or name in _LOADED_FILES:
        return
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a .py file or a module name")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its dataclasses look their module up
    registered = set(registry)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # A fixed file can be loaded again: forget it, and the entries it registered before failing.
        del sys.modules[name]
        for added in set(registry) - registered:
            del registry[added]
        raise
    _LOADED_FILES.add(name)
