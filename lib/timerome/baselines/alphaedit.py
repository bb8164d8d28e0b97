"""AlphaEdit (Fang et al. 2025): MEMIT's update projected onto the null space of the preserved keys.

P projects onto the span of the eigenvectors of C = E[k kᵀ] whose eigenvalues are small
(`null_projector`, AlphaEdit's ``get_project``): directions the corpus keys barely occupy. With
the keys K [n, in] and residuals R [n, out] of MEMIT's layer loop (`memit.window_edit`) and the
keys K_p of earlier AlphaEdit batches (sequential editing),

    ΔW = Rᵀ K P ((KᵀK + K_pᵀK_p) P + α I)⁻¹            (AlphaEdit_main.py, weights as [out, in])

so ΔW k0 = 0 for every k0 with P k0 = 0: the preserved keys' outputs do not move.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..capture import DEFAULT_TARGET
from .editing import Edit, VHParams, check_layers, check_positive, compute_keys, timer, weights_applied
from .memit import prepare_batch, window_edit


@dataclass(frozen=True)
class AlphaEditHParams(VHParams):
    """AlphaEdit's settings: the target-value fields of `editing.VHParams`, the window, the
    null-space threshold and the ridge α (AlphaEdit's ``L2``)."""
    layers: tuple = (0, 1, 2)  # as MEMIT (AlphaEdit edits MEMIT's window)
    # Relative, not AlphaEdit's absolute 2e-2: an eigenvalue of C counts as null below this fraction of
    # C's largest one. Absolute eigenvalues depend on the model's key scale (the tiny layers' spectra
    # differ by 10x among themselves), the ratio does not. 3e-3 is the rule MEMIT's λ was chosen by
    # (memit.MEMITHParams) on the half-decade grid 3e-3..3e-2: larger thresholds admit directions the
    # masked states' keys do occupy, and the retain set collapses with the forget set.
    nullspace_threshold: float = 3e-3
    l2: float = 10.0  # α, AlphaEdit's L2 (Llama3-8B: 10)
    clamp_norm_factor: float = 4.0  # as MEMITHParams: δ is bounded by the MLP output here

    def __post_init__(self):
        self._check_v()
        object.__setattr__(self, "layers", check_layers(self, "layers"))
        check_positive(self, "nullspace_threshold", upper=1.0)
        check_positive(self, "l2")


def null_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """P [d, d] float64: the orthogonal projector onto the eigenvectors of C with eigenvalue
    < threshold x the largest eigenvalue (symmetric, P² = P)."""
    C = C.double()
    evals, U = torch.linalg.eigh((C + C.T) / 2)  # C is symmetric PSD: eigh, ascending
    U0 = U[:, evals < threshold * evals[-1]]
    return U0 @ U0.T


def alphaedit_update(K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, alpha: float,
                     prev: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW [out, in] = Rᵀ K P ((KᵀK + prev) P + α I)⁻¹ in float64 (``prev``: K_pᵀK_p of earlier batches)."""
    K, R, P = K.double(), R.double(), P.double()
    M = K.T @ K + (0 if prev is None else prev.double())
    A = P @ M + alpha * torch.eye(P.shape[0], dtype=torch.float64)
    return torch.linalg.solve(A, P @ K.T @ R).T  # = (A⁻¹ P Kᵀ R)ᵀ, AlphaEdit's solve


def build(bb, facts=None, hp: AlphaEditHParams | None = None, *, target: str = DEFAULT_TARGET, cache_dir=None,
          corpus=None, skip_unlocatable: bool = True, batch_size: int = 32, previous: Edit | None = None,
          requests=None) -> Edit:
    """One AlphaEdit batch of ``facts`` towards ``target`` -> `editing.Edit`. Arguments as `memit.build`.

    ``previous``: an earlier AlphaEdit `Edit` of this backbone (sequential editing). The batch is
    built with it applied, its keys enter the K_pᵀK_p term, and the returned Edit holds the sum of
    both ΔW (apply it instead of ``previous``, not on top). The projectors come from the unedited
    backbone's statistics, as AlphaEdit computes them once before editing."""
    hp = AlphaEditHParams() if hp is None else hp
    clock = timer()
    reqs, skipped, C, prefixes = prepare_batch(bb, facts, hp, AlphaEditHParams, target, corpus, skip_unlocatable,
                                        cache_dir, batch_size, requests)  # statistics before `previous` is applied
    P = {l: null_projector(C[l], hp.nullspace_threshold) for l in hp.layers}
    prev_cov, prev_deltas, prev_facts = {}, {}, ()
    if previous is not None:
        if previous.method != "alphaedit" or previous.backbone != bb.name or tuple(previous.layers) != hp.layers:
            raise ValueError(f"previous={previous!r} is not an AlphaEdit edit of {bb.name!r} at layers {hp.layers}")
        prev_cov, prev_deltas, prev_facts = previous.info["key_cov"], previous.deltas, previous.fact_ids
    with weights_applied(bb, dict(prev_deltas)):
        deltas, info = window_edit(bb, reqs, hp.layers, hp, prefixes,
                                   lambda i, l, K, R: alphaedit_update(K, R, P[l], hp.l2, prev_cov.get(l)),
                                   batch_size=batch_size)
    total = {l: prev_deltas.get(l, 0) + d for l, d in deltas.items()}
    with weights_applied(bb, total):  # AlphaEdit's cache_c: this batch's keys after the edit, for the next batch
        key_cov = {}
        for l in hp.layers:
            K = compute_keys(bb, reqs, l, prefixes, batch_size=batch_size)
            key_cov[l] = (prev_cov[l] if l in prev_cov else 0) + K.T @ K
    info.update(key_cov=key_cov, null_dims={l: int(round(float(P[l].trace()))) for l in hp.layers},
                batch_facts=tuple(r.fact_id for r in reqs))
    return Edit("alphaedit", bb.name, total, tuple(prev_facts) + tuple(r.fact_id for r in reqs), tuple(skipped), hp,
                target, clock(bb.device), info)
