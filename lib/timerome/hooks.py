"""The one hooking mechanism: a context manager over named torch modules (cf. ROME's TraceDict).

`Backbone.trace` names the points; this module only registers and removes the hooks. A site is
``(module, "output")`` (a forward hook on what the module returns) or ``(module, "input")`` (a
pre-hook on its first argument, e.g. a down-projection's input). A module may return a tensor or
a tuple whose first element is the hidden state (LLaDA blocks return ``(x, cache)``); that is
handled here, once, so edit functions always see and return a plain tensor.
"""
from __future__ import annotations

import contextlib

import torch


class _StopForward(Exception):
    """Raised after the ``stop_after`` site: the rest of the forward is not needed."""

    def __init__(self, owner):
        super().__init__("forward stopped by a trace")
        self.owner = owner


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value, new):
    return (new, *value[1:]) if isinstance(value, tuple) else new


@contextlib.contextmanager
def hooked(sites: dict, *, edit=None, stop_after=None):
    """While active, every forward through ``sites`` ({name: (module, "output" | "input")}) passes
    each site's hidden state ``h`` through ``edit(name, h)`` (None keeps h) and records the result
    in the yielded dict ({name: h of the latest forward}). With ``stop_after``, the forward ends
    right after that site and the exception is absorbed at the end of the ``with`` block. Hooks are
    removed on exit, also when the block raises."""
    if stop_after is not None and stop_after not in sites:
        raise ValueError(f"stop_after={stop_after!r} is not one of the traced points {sorted(sites)}")
    seen, handles, token = {}, [], object()

    def visit(name, h):
        new = edit(name, h) if edit is not None else None
        seen[name] = h if new is None else new
        if name == stop_after:
            raise _StopForward(token)
        return new

    for name, (module, where) in sites.items():
        if where == "output":
            def hook(_mod, _args, out, name=name):
                new = visit(name, _first(out))
                return None if new is None else _replace_first(out, new)
            handles.append(module.register_forward_hook(hook))
        elif where == "input":
            def pre(_mod, args, name=name):
                new = visit(name, args[0])
                return None if new is None else (new, *args[1:])
            handles.append(module.register_forward_pre_hook(pre))
        else:
            raise ValueError(f"site {name!r}: where={where!r}, expected 'output' or 'input'")
    try:
        yield seen
    except _StopForward as stop:
        if stop.owner is not token:  # another trace's stop: not ours to absorb
            raise
    finally:
        for h in handles:
            h.remove()


def has_hooks(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` has a forward hook or pre-hook installed (e.g. an edit)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
