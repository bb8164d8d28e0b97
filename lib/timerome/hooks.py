"""Forward hooks as context managers, so an exception never leaves a model modified.

Hook points are named like TransformerLens: ``"embed"``, ``"resid.<l>"``, ``"attn.<l>"``,
``"mlp.<l>"`` (see `Backbone.hook_point`). A hooked module may return a tensor or a tuple whose
first element is the hidden state (LLaDA blocks return ``(x, cache)``); both are handled here,
once, so callers always see and return a plain tensor.
"""
from __future__ import annotations

import contextlib

import torch


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextlib.contextmanager
def edit_output(module: torch.nn.Module, fn):
    """While active, ``module``'s hidden-state output ``h`` becomes ``fn(h)`` (``None`` keeps h)."""

    def hook(_mod, _inp, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


@contextlib.contextmanager
def edit_outputs(modules: dict, fn):
    """`edit_output` on several modules at once; ``fn(name, h)`` gets the hook point's name."""
    with contextlib.ExitStack() as stack:
        for name, module in modules.items():
            stack.enter_context(edit_output(module, lambda h, name=name: fn(name, h)))
        yield


class Capture(dict):
    """Records the hidden-state output of each named module on every forward (a list per name)."""


@contextlib.contextmanager
def capture(modules: dict, *, detach=True, select=None):
    """Capture outputs of ``modules`` ({name: module}); ``select(h)`` may slice what is kept."""
    store = Capture({name: [] for name in modules})

    def keep(name, h):
        h = h.detach() if detach else h
        store[name].append(select(h) if select is not None else h)
        return None

    with edit_outputs(modules, keep):
        yield store
