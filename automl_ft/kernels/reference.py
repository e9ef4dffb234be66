"""PyTorch references of every kernel: the CPU fallback of ``backend="torch"`` and the oracle of the tests.

Tests and benchmarks import these; nobody re-types the math.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    *,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PEFT's unmerged LoRA: ``x @ weight.T + bias + scaling * (dropout(x) @ lora_a.T) @ lora_b.T``.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``, frozen. bias: ``[out]`` or None, frozen.
        lora_a: ``[r, in]``. lora_b: ``[out, r]``.
        scaling: ``alpha / r``.
        dropout_p, training: LoRA dropout on the adapter branch's input, active only when training.
        dropout_mask: a ``{0, 1}`` mask shaped like ``x`` to use instead of drawing one (the tests pass the Triton
            kernel's own mask here, so both paths drop the same elements); kept elements are scaled by 1/(1-p).

    Returns:
        ``[..., out]`` in x's dtype. Autograd gives the gradients of x, lora_a and lora_b.
    """
    # Rows flattened first so that y below is a fresh 2-D tensor, not a view: an in-place op on a view would make
    # autograd add M x N copies (CopySlices) to backward.
    m, k = math.prod(x.shape[:-1]), x.shape[-1]
    x2d = x.reshape(m, k)
    y = F.linear(x2d, weight, bias)
    if dropout_mask is not None:
        xd = x2d * dropout_mask.reshape(m, k).to(x.dtype) / (1.0 - dropout_p) if dropout_p > 0 else x2d
    else:
        xd = F.dropout(x2d, p=dropout_p, training=training) if dropout_p > 0 else x2d
    # The adapters may be kept in another dtype than the activations (fp32 adapters on a bf16 model); compute the
    # branch in the activations' dtype like PEFT does under autocast (y's dtype: under autocast y and x @ A.T are
    # bf16 while x and lora_b may be fp32).
    xa = F.linear(xd, lora_a.to(x.dtype)).to(y.dtype)
    # One addmm into the base output (issue 13) instead of PEFT's low-rank M x N tensor, its scaling and the add
    # (three extra M x N passes). Autograd allows the in-place update because linear's backward does not read its
    # output, and addmm's backward applies `scaling` to the small [M, r] and [N, r] gradients. On a 2-core CPU,
    # fp32, r=16: fwd+bwd 1.06-1.12x, fwd 1.1-1.7x (bench/results/lora-reference-addmm-cpu-2026-12-03.json).
    y.addmm_(xa, lora_b.to(y.dtype).t(), alpha=scaling)
    return y.view(*x.shape[:-1], y.shape[-1])


# ------------------------------------------------------------------------------------------------------- AdamW ----


@torch.no_grad()
def adamw_grad_norm_reference(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of ``grads`` as ``torch.nn.utils.clip_grad_norm_`` computes it: the norm of the per-tensor norms.

    In fp32 whatever the gradients' dtype (``clip_grad_norm_`` would return a bf16 norm for bf16 gradients).
    Returns a 0-dim fp32 tensor on the first gradient's device (0 for an empty list).
    """
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]))


def adamw_clip_coef_reference(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_``'s gradient scale: ``min(max_norm / (total_norm + 1e-6), 1)``, a 0-dim tensor."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


@torch.no_grad()
def adamw_step_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool = False,
    maximize: bool = False,
    clip_coef: torch.Tensor | None = None,
    anchors: list[torch.Tensor] | None = None,
    anchor_decay: float = 0.0,
    masters: list[torch.Tensor] | None = None,
    count_step: bool = True,
) -> None:
    """One AdamW step over lists of tensors, in place: the oracle of the fused kernel and ``backend="torch"``.

    The AdamW math is PyTorch's own fused kernel (``torch._fused_adamw_``, what ``torch.optim.AdamW(fused=True)``
    runs: decoupled weight decay, bias correction, amsgrad, maximize; one pass over memory, which on a 2-core CPU is
    several times faster than the default for-each-tensor path). Around it, the fine-tuning extensions:

    * ``clip_coef``: the gradients are multiplied by it first (as ``clip_grad_norm_`` would, but into temporaries:
      ``p.grad`` is left as it was, like the fused kernel leaves it).
    * ``anchors`` / ``anchor_decay`` (L2-SP): ``p -= lr * anchor_decay * (p_prev - anchor)`` after the AdamW update,
      with ``p_prev`` the parameter before this step.
    * ``masters``: fp32 master weights of low-precision ``params``; the states are then fp32 too. The update runs on
      the masters, which are then rounded to nearest even into ``params``.
    * Low-precision ``params`` without masters: the step is computed in fp32 from upcast copies and every tensor is
      rounded once when written back (``torch.optim.AdamW`` would round after every operation).

    ``steps`` are the per-parameter step counters (0-dim fp32 tensors on the parameters' device), incremented here
    unless ``count_step=False`` (``FusedAdamW`` counts its flat step vector in one operation: a foreach add over
    448 CPU scalars costs 0.8 ms).
    """
    if not params:
        return
    if count_step:
        torch._foreach_add_(steps, 1)
    low_precision = params[0].dtype != torch.float32
    if masters is not None:
        work, states, maxs = masters, (exp_avgs, exp_avg_sqs), max_exp_avg_sqs
        grads = [g.float() for g in grads]
        if clip_coef is not None:
            torch._foreach_mul_(grads, clip_coef.to(grads[0].device))
    else:
        if clip_coef is not None:
            grads = torch._foreach_mul([g.float() for g in grads] if low_precision else grads,
                                       clip_coef.to(grads[0].device))
        elif low_precision:
            grads = [g.float() for g in grads]
        if low_precision:
            work = [p.float() for p in params]
            states = ([m.float() for m in exp_avgs], [v.float() for v in exp_avg_sqs])
            maxs = [m.float() for m in max_exp_avg_sqs]
        else:
            work, states, maxs = params, (exp_avgs, exp_avg_sqs), max_exp_avg_sqs
    diffs = None
    if anchors is not None and anchor_decay:
        diffs = torch._foreach_sub(work, [a.float() for a in anchors] if anchors[0].dtype != torch.float32 else anchors)
    torch._fused_adamw_(work, grads, states[0], states[1], maxs if amsgrad else [], steps, amsgrad=amsgrad, lr=lr,
                        beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=maximize)
    if diffs is not None:
        if isinstance(lr, torch.Tensor):
            torch._foreach_mul_(diffs, (lr * anchor_decay).to(work[0].device))
            torch._foreach_sub_(work, diffs)
        else:
            torch._foreach_add_(work, diffs, alpha=-(lr * anchor_decay))
    if masters is not None:
        torch._foreach_copy_(params, masters)
    elif low_precision:
        torch._foreach_copy_(params, work)
        torch._foreach_copy_(exp_avgs, states[0])
        torch._foreach_copy_(exp_avg_sqs, states[1])
        if amsgrad:
            torch._foreach_copy_(max_exp_avg_sqs, maxs)
