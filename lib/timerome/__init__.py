"""TimeROME-DLM: diffusion-time causal tracing and inference-time knowledge editing for MDLMs."""
__version__ = "0.1.0"


def load_backbone(name_or_path, *, trust_remote_code=False, device=None, dtype=None, **kwargs):
    """Load a model + tokenizer + model family. See `timerome.loading.load_backbone`."""
    from .loading import load_backbone as _load

    return _load(name_or_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype, **kwargs)
