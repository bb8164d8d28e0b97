"""Train and save the embedded tiny backbones (``tiny-mdlm``, ``tiny-mdlm-retain``, ``tiny-arm``, ``tiny-arm-retain``)
and adapt them into the tiny analogues of the MDLM family (Table II, `ADAPTED`).

One tokenizer is trained on the whole world and shared by all models, so their token ids
agree (a retain model differs from its twin only in never seeing forget01). An adaptation starts
from a committed model's weights and continues training on the same world (without forget01 for a
retain twin, whose source is a retain model too) the way its real counterpart was made.
Saved per model: ``model.safetensors`` (fp16, a few MB), ``config.json``, ``tokenizer.json`` and
``backbone.json`` (prompt format, special tokens, recipe, world composition, training history).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..loading import WEIGHTS_DIR
from . import world
from .model import TinyConfig, TinyLM
from .train import SPECIAL_TOKENS, encode_pairs, train, train_tokenizer

# name -> (objective, TOFU splits left out of the world, recipe overrides)
MODELS = {
    "tiny-mdlm": ("mdlm", (), {}),
    "tiny-mdlm-retain": ("mdlm", ("forget01",), {}),
    # Next-token prediction memorises the world far sooner than masked diffusion (its loss curve
    # is in 00_tiny_backbones), so the AR model gets a shorter schedule (at the lr it was trained with).
    "tiny-arm": ("arm", (), {"epochs": 100, "lr": 3e-3, "restart_epochs": 0}),
    "tiny-arm-retain": ("arm", ("forget01",), {"epochs": 100, "lr": 3e-3, "restart_epochs": 0}),
}


@dataclass(frozen=True)
class Adaptation:
    """A tiny analogue made from the committed model ``source``: its config changed by ``config``,
    trained with masked diffusion under ``recipe`` (overrides of the source's recipe), ``anneal``
    the share of its steps over which DiffuLLaMA's attention-mask annealing opens the causal mask."""
    source: str
    config: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    exclude: tuple = ()
    anneal: float = 0.0
    note: str = ""


# 40 epochs at 5e-4 left loss 0.33 and forget01 accuracy 0.64 (measured): the template is new to the model
_INSTRUCT = {"epochs": 120, "lr": 1e-3, "warmup": 50, "prompt_template": "User: {question}\nAssistant:"}
_FROM_AR = {"epochs": 200, "lr": 1.5e-3, "warmup": 50}  # 60 epochs plateau near loss 1 (measured)
_MOE = {"n_experts": 4, "expert_top_k": 2}  # this artifact's choice (LLaDA-MoE's values are not public here)
ADAPTED = {}
for _retain in (False, True):
    _sfx, _ex = ("-retain", ("forget01",)) if _retain else ("", ())
    ADAPTED |= {
        f"tiny-llada-instruct{_sfx}": Adaptation(
            f"tiny-mdlm{_sfx}", recipe=_INSTRUCT, exclude=_ex,
            note="LLaDA-Instruct's SFT: the same QA inside a chat template, prompt never masked, EOS fill scored"),
        f"tiny-dream{_sfx}": Adaptation(
            f"tiny-arm{_sfx}", config={"causal": False, "shift_logits": True}, recipe=_FROM_AR, exclude=_ex,
            note="Dream's adaptation of an AR model: attention made bidirectional, output i keeps predicting token i+1"),
        f"tiny-diffullama{_sfx}": Adaptation(
            f"tiny-arm{_sfx}", config={"causal": False, "shift_logits": True}, recipe=_FROM_AR, exclude=_ex, anneal=0.5,
            note="DiffuLLaMA: the causal mask opened at random with a probability ramping to 1 over half the steps, shifted"),
        f"tiny-llada-moe{_sfx}": Adaptation(
            f"tiny-mdlm{_sfx}", config=_MOE, recipe={"epochs": 30, "lr": 5e-4, "warmup": 20}, exclude=_ex,
            note="upcycled: every expert a copy of the dense MLP (plus 1% noise), a new router; 4 experts, top-2"),
    }


@dataclass
class Recipe:
    block: str = "llama"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 344  # SwiGLU: 8/3 x d_model keeps the parameter count of a 4x GELU MLP
    max_len: int = 256
    vocab_size: int = 4096
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1.5e-3  # 3e-3 plateaus near loss 3 until the cosine decay (measured)
    warmup: int = 50
    extra_eos: int = 8
    canvas: int = 96  # EOS fill up to a random length <= canvas (= the sampler's gen_length); 0: batch max only
    canvas_prob: float = 0.25  # share of batches filled towards the canvas
    masking: str = "bernoulli"  # "exact": same objective, lower-variance estimator (see train.mdlm_batch)
    bf16: bool = False  # CPU bfloat16 autocast for the forward (fp32 weights): faster on CPUs with AVX512-BF16
    # Warm restart: a second cosine cycle of `restart_epochs` from the stage-1 weights (rounded to
    # fp16, as every checkpoint is stored), fresh optimiser, seed + 1. Stage 1 ends with lr -> 0 while
    # forget10 accuracy is still rising (measured: 0.55 after stage 1); 0 = one stage only.
    restart_epochs: int = 150
    restart_lr: float = 1e-3
    seed: int = 0
    threads: int = 1  # the thread count is part of bitwise reproducibility
    prompt_template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    parts: tuple = field(default_factory=lambda: world.PARTS)

    def model_config(self, vocab_size: int, causal: bool) -> TinyConfig:
        return TinyConfig(vocab_size=vocab_size, n_layers=self.n_layers, d_model=self.d_model,
                          n_heads=self.n_heads, d_mlp=self.d_mlp, max_len=self.max_len, block=self.block,
                          causal=causal)


def build_tokenizer(recipe: Recipe, root=None):
    facts = world.build_world(root, parts=recipe.parts)
    texts = [recipe.prompt_template.format(question=f.question) + recipe.answer_prefix + f.answer for f in facts]
    return train_tokenizer(texts, recipe.vocab_size)


def train_backbone(name: str, recipe: Recipe, tokenizer, *, root=None, out_dir=WEIGHTS_DIR, eval_fn=None,
                   eval_every=0, log=print, stage1=None) -> Path:
    """Train one named tiny backbone with ``recipe`` and save it under ``out_dir/name``.

    ``stage1``: a saved checkpoint of this model after stage 1 of the same recipe (for example the
    committed one before a warm restart was added); stage 1 is then read instead of re-run. Its
    ``backbone.json`` must record the same recipe (restart fields aside) and world.
    """
    if name not in MODELS:
        raise ValueError(f"unknown tiny backbone {name!r}; expected one of {sorted(MODELS)}")
    objective, exclude, overrides = MODELS[name]
    recipe = replace(recipe, **overrides)
    facts = world.build_world(root, parts=recipe.parts, exclude_splits=exclude)
    examples = encode_pairs(tokenizer, [(f.question, f.answer) for f in facts], recipe.prompt_template,
                            recipe.answer_prefix)
    cfg = recipe.model_config(len(tokenizer), causal=objective == "arm")
    special = {"eos": tokenizer.eos_token_id, "mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id}
    common = dict(objective=objective, batch_size=recipe.batch_size, warmup=recipe.warmup, extra_eos=recipe.extra_eos,
                  masking=recipe.masking, canvas=recipe.canvas, canvas_prob=recipe.canvas_prob, bf16=recipe.bf16,
                  special_ids=special, eval_fn=eval_fn, eval_every=eval_every, log=log)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    try:
        model, state, stage1_seconds = None, None, None
        if stage1 is not None:
            state, history, stage1_seconds = _read_stage1(stage1, name, recipe, tokenizer, cfg)
        else:
            model, history = train(cfg, examples, epochs=recipe.epochs, lr=recipe.lr, seed=recipe.seed, **common)
        if recipe.restart_epochs:
            if state is None:  # start from the weights as a checkpoint stores them (fp16)
                state = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
            model, history2 = train(cfg, examples, epochs=recipe.restart_epochs, lr=recipe.restart_lr,
                                    seed=recipe.seed + 1, init_state=state, **common)
            history = history + [{**h, "epoch": recipe.epochs + h["epoch"], "stage": 2} for h in history2]
        elif model is None:  # a stage-1 checkpoint and nothing to add
            model = TinyLM(cfg)
            model.load_state_dict({k: v.float() for k, v in state.items()})
            model.eval()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0 + (stage1_seconds or 0.0)
    return save_backbone(model, tokenizer, name, out_dir, meta={
        "objective": objective, "excluded_splits": list(exclude), "recipe": asdict(recipe),
        "world": world.composition(root, parts=recipe.parts, exclude_splits=exclude),
        "n_params": model.n_params(), "train_seconds": round(seconds, 1), "history": history,
        "stage1_from": None if stage1 is None else str(stage1),
        "machine": {"torch": torch.__version__, "threads": recipe.threads, "cpu": platform.processor() or platform.machine()},
        "prompt_template": recipe.prompt_template, "answer_prefix": recipe.answer_prefix})


def upcycle(state: dict, cfg: TinyConfig, *, seed: int = 0, noise: float = 0.01) -> dict:
    """A dense tiny model's state dict as a mixture of experts: every expert a copy of its layer's
    MLP plus Gaussian noise of ``noise`` x that weight's std (so the experts can drift apart), the
    router as a fresh seeded model initialises it. The noiseless copy computes the dense MLP exactly."""
    torch.manual_seed(seed)
    out = {k: v.float() for k, v in TinyLM(cfg).state_dict().items()}  # the router's initialisation
    gen = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if ".mlp." not in k:
            out[k] = v.float()
            continue
        head, tail = k.split(".mlp.", 1)
        for e in range(cfg.n_experts):
            w = v.float()
            out[f"{head}.mlp.experts.{e}.{tail}"] = w + noise * w.std() * torch.randn(w.shape, generator=gen)
    missing = [k for k in TinyLM(cfg).state_dict() if k not in out]
    if missing:
        raise ValueError(f"upcycle: no weights for {missing[:3]}")
    return out


def adapt_backbone(name: str, *, root=None, out_dir=WEIGHTS_DIR, src_dir=WEIGHTS_DIR, log=print,
                   epochs: int | None = None) -> Path:
    """Make the tiny analogue ``name`` of `ADAPTED` from its committed source model and save it
    under ``out_dir/name`` (``epochs``: override, for tests). Deterministic like `train_backbone`."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    if name not in ADAPTED:
        raise ValueError(f"unknown tiny analogue {name!r}; expected one of {sorted(ADAPTED)}")
    a = ADAPTED[name]
    src = Path(src_dir) / a.source
    if not (src / "backbone.json").exists():
        raise FileNotFoundError(f"{name} is adapted from {a.source}, but {src / 'backbone.json'} does not exist: "
                                f"train it first (python -m timerome.tiny.recipe {a.source})")
    meta = load_meta(src)
    if meta.get("excluded_splits", []) != list(a.exclude):
        raise ValueError(f"{name} excludes {list(a.exclude)}, but its source {a.source} was trained without "
                         f"{meta.get('excluded_splits')}: a retain twin must come from a retain model")
    fields_ = Recipe.__dataclass_fields__
    recipe = replace(Recipe(**{k: (tuple(v) if k == "parts" else v) for k, v in meta["recipe"].items() if k in fields_}),
                     **{"restart_epochs": 0, **a.recipe, **({} if epochs is None else {"epochs": epochs})})
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), **meta["special_tokens"])
    src_cfg = TinyConfig.load(src / "config.json")
    cfg = replace(src_cfg, **a.config)
    state = load_file(str(src / "model.safetensors"))
    if cfg.n_experts and not src_cfg.n_experts:
        state = upcycle(state, cfg, seed=recipe.seed)
    facts = world.build_world(root, parts=recipe.parts, exclude_splits=a.exclude)
    examples = encode_pairs(tokenizer, [(f.question, f.answer) for f in facts], recipe.prompt_template,
                            recipe.answer_prefix)
    special = {"eos": tokenizer.eos_token_id, "mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id}
    steps = recipe.epochs * -(-len(examples) // recipe.batch_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    try:
        model, history = train(cfg, examples, objective="mdlm", epochs=recipe.epochs, batch_size=recipe.batch_size,
                               lr=recipe.lr, warmup=recipe.warmup, extra_eos=recipe.extra_eos, seed=recipe.seed,
                               special_ids=special, masking=recipe.masking, canvas=recipe.canvas,
                               canvas_prob=recipe.canvas_prob, bf16=recipe.bf16, init_state=state,
                               anneal_steps=round(a.anneal * steps), log=log)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return save_backbone(model, tokenizer, name, out_dir, meta={
        "objective": "mdlm", "excluded_splits": list(a.exclude), "recipe": asdict(recipe),
        "adapted_from": a.source, "adaptation": {**asdict(a), "anneal_steps": round(a.anneal * steps)},
        "world": world.composition(root, parts=recipe.parts, exclude_splits=a.exclude),
        "n_params": model.n_params(), "train_seconds": round(time.perf_counter() - t0, 1), "history": history,
        "machine": {"torch": torch.__version__, "threads": recipe.threads, "cpu": platform.processor() or platform.machine()},
        "prompt_template": recipe.prompt_template, "answer_prefix": recipe.answer_prefix})


def _read_stage1(path, name, recipe: Recipe, tokenizer, cfg):
    """(fp16 state dict, history, train seconds) of a saved stage-1 checkpoint, checked against the recipe."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = load_meta(path)
    restart = ("restart_epochs", "restart_lr")
    # through JSON so tuples compare equal to the lists the checkpoint stored
    want = {k: v for k, v in json.loads(json.dumps(asdict(recipe))).items() if k not in restart}
    # fields added to the recipe after the checkpoint was written count as their defaults
    have = {k: meta["recipe"].get(k, f.default) for k, f in Recipe.__dataclass_fields__.items() if k not in restart}
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if meta.get("name") != name or diff:
        raise ValueError(f"{path}: not a stage-1 checkpoint of {name!r} with this recipe "
                         f"(name {meta.get('name')!r}; differing recipe fields: {diff})")
    if json.loads(Path(path / "config.json").read_text()) != asdict(cfg):
        raise ValueError(f"{path / 'config.json'} does not match the recipe's model config")
    if json.loads(Path(path / "tokenizer.json").read_text()) != json.loads(tokenizer.backend_tokenizer.to_str()):
        raise ValueError(f"{path / 'tokenizer.json'} differs from the tokenizer trained by this recipe")
    history = [h for h in meta["history"] if h.get("stage", 1) == 1][:recipe.epochs]
    if len(history) != recipe.epochs:
        raise ValueError(f"{path}: stage 1 has {len(history)} epochs, the recipe {recipe.epochs}")
    return load_file(str(path / "model.safetensors")), history, meta.get("train_seconds")


def save_backbone(model, tokenizer, name: str, out_dir, *, meta: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(out_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))
    model.config.save(path / "config.json")
    tokenizer.backend_tokenizer.save(str(path / "tokenizer.json"))
    meta = {"name": name, "special_tokens": SPECIAL_TOKENS, **meta}
    (path / "backbone.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_meta(name_or_path) -> dict:
    """The ``backbone.json`` of an embedded tiny model (by name) or of a saved directory."""
    path = Path(name_or_path)
    path = path if (path / "backbone.json").exists() else WEIGHTS_DIR / str(name_or_path)
    if not (path / "backbone.json").exists():
        raise FileNotFoundError(f"no tiny backbone {name_or_path!r}: {path / 'backbone.json'} does not exist")
    return json.loads((path / "backbone.json").read_text())


def main(argv=None):
    """``python -m timerome.tiny.recipe tiny-mdlm tiny-arm --epochs 400 --threads 1``"""
    import argparse

    ap = argparse.ArgumentParser(description="Train embedded tiny backbones with the project's recipe.")
    ap.add_argument("names", nargs="+", choices=sorted(MODELS) + sorted(ADAPTED))
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--eval-every", type=int, default=0, help="log forget10 accuracy every N epochs")
    for f in ("epochs", "threads", "seed", "batch_size", "d_model", "n_layers", "d_mlp", "n_heads", "canvas", "warmup"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, dest=f)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--canvas-prob", type=float, dest="canvas_prob")
    ap.add_argument("--masking", choices=["bernoulli", "exact"])
    ap.add_argument("--block", choices=["llama", "bert"])
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--restart-epochs", type=int, dest="restart_epochs")
    ap.add_argument("--restart-lr", type=float, dest="restart_lr")
    ap.add_argument("--stage1", help="directory holding saved stage-1 checkpoints (one per name) to restart from")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in Recipe.__dataclass_fields__ and v is not None}
    recipe = Recipe(**overrides)
    tok = build_tokenizer(recipe)
    eval_fn = None
    if args.eval_every:
        from .. import data
        from ..backbones import Backbone
        from ..families import FAMILIES
        from ..metrics import answer_token_accuracy, token_accuracy_summary

        probe = data.load_tofu("forget10")[::10]

        def eval_fn(model):
            if model.config.causal:
                return {}
            bb = Backbone(model, tok, FAMILIES["tiny"], mask_id=tok.mask_token_id, prompt_template=recipe.prompt_template,
                          answer_prefix=recipe.answer_prefix)
            s = token_accuracy_summary(answer_token_accuracy(bb, probe, gen_length=96, steps=8))
            return {"probe_acc": s["token_accuracy"], "probe_em": s["exact_match"]}
    for name in args.names:
        if name in ADAPTED:  # its recipe is its source's, with the adaptation's overrides
            path = adapt_backbone(name, out_dir=args.out, src_dir=args.out, log=lambda s: print(name, s, flush=True))
            print(f"saved {name} to {path}", flush=True)
            continue
        path = train_backbone(name, recipe, tok, out_dir=args.out, eval_fn=eval_fn, eval_every=args.eval_every,
                              log=lambda s: print(name, s, flush=True),
                              stage1=None if args.stage1 is None else Path(args.stage1) / name)
        print(f"saved {name} to {path}", flush=True)


if __name__ == "__main__":
    main()
