"""One table from config names to objects, shared by priors, likelihoods and networks.

Strings live at the edges: config files and the CLI name a component, this
table turns the name (plus keyword options) into the object, and everything
past that point works with objects only.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable


def did_you_mean(word: str, choices) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    doc: str
    target: type | None  # the class whose keyword options the name accepts

    def options(self) -> dict[str, Any]:
        """Keyword options a user may set, with their defaults."""
        if self.target is None:
            return {}
        sig = inspect.signature(self.target.__init__)
        skip = {"self", "latent_dim", "data_shape", "n_params"}
        return {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()
            if k not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


class Registry:
    """Names -> factories for one kind of component (``"prior"``, ``"likelihood"``, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any], doc: str = "", target: type | None = None):
        self._entries[name] = Entry(name, factory, doc, target)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(repr(n) for n in self._entries)
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names are {valid}.{did_you_mean(name, self._entries)}"
            ) from None

    def split_spec(self, spec) -> tuple[str, dict]:
        """``"mog"`` or ``{"name": "mog", "n_components": 5}`` -> ``("mog", {"n_components": 5})``."""
        if isinstance(spec, str):
            return spec, {}
        if isinstance(spec, dict):
            if "name" not in spec:
                raise ValueError(f"a {self.kind} given as a table needs a 'name' key, got keys {sorted(spec)}")
            options = {k: v for k, v in spec.items() if k != "name"}
            return spec["name"], options
        raise TypeError(f"a {self.kind} is given by name, by a {{'name': ..., **options}} dict, or as an object; "
                        f"got {type(spec).__name__}")

    def check_options(self, name: str, options: dict) -> None:
        entry = self[name]
        valid = entry.options()
        for key in options:
            if key not in valid:
                listed = ", ".join(valid) or "none"
                raise ValueError(
                    f"unknown option {key!r} for {self.kind} {name!r}; its options are: {listed}."
                    f"{did_you_mean(key, valid)}"
                )

    def build(self, spec, **context):
        name, options = self.split_spec(spec)
        self.check_options(name, options)
        return self[name].factory(**context, **options)
