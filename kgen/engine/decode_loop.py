"""The per-token layer loop of the LLaMA runner, in the subset of Python that TorchScript compiles.

Decoding one token of a 200M-parameter model runs about 25 small PyTorch ops per layer. Called from Python,
each op pays for argument parsing and dispatch: about 2.5 ms of a 12 ms token on a 2-core CPU. The same
function compiled with ``torch.jit.script`` runs the same ops in the same order from TorchScript's
interpreter (same results, bit for bit; graph optimization is switched off around the call, so nothing is
fused or re-specialized between calls). Where it cannot be compiled (a PyTorch without TorchScript, or
without ``torch.rms_norm``), the plain Python function runs instead.

No ``from __future__ import annotations`` here: TorchScript reads these annotations (the FBGEMM class is
named in strings so that importing this module never needs it).
"""

# TorchScript (as old as PyTorch 2.1) understands typing.List / Optional, not list[...] / X | None:
# ruff: noqa: UP006, UP007, UP035, UP045
import warnings
from collections.abc import Callable
from typing import List, Optional, Union

import torch
import torch.nn.functional as F

# How the matrices of a weight copy are stored (``kind`` below; TorchScript code spells them as numbers).
DENSE, ONEDNN, FBGEMM_FP16, FBGEMM_INT8 = 0, 1, 2, 3

HAS_FUSED_RMS_NORM = hasattr(torch, "rms_norm")


def product(
    kind: int,
    x: torch.Tensor,
    index: int,
    matrices: List[torch.Tensor],
    packed: "List[torch.classes.quantized.LinearPackedParamsBase]",
    biases: List[torch.Tensor],
) -> torch.Tensor:
    """``x @ W.T + b`` for matrix ``index`` of the copy; an empty bias tensor means none."""
    bias = biases[index]
    if kind >= 2:  # FBGEMM_FP16, FBGEMM_INT8
        if kind == 2:
            out = torch.ops.quantized.linear_dynamic_fp16(x, packed[index])
        else:
            out = torch.ops.quantized.linear_dynamic(x, packed[index], True)
        if bias.numel() > 0:
            out = out + bias
        return out
    optional_bias: Optional[torch.Tensor] = None
    if bias.numel() > 0:
        optional_bias = bias
    if kind == 1:  # ONEDNN
        no_scalars: List[Optional[Union[int, float, complex]]] = []  # TorchScript's "Scalar?[]"
        return torch.ops.mkldnn._linear_pointwise(x, matrices[index], optional_bias, "none", no_scalars, "")
    return F.linear(x, matrices[index], optional_bias)


def can_fuse_norm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``norm`` may use PyTorch's own op for ``x``: it exists, x and weight share a dtype, and that
    is float32 (where it rounds like transformers' LlamaRMSNorm) or x is on a GPU (one kernel instead of
    seven, rounding once where transformers rounds twice)."""
    return HAS_FUSED_RMS_NORM and weight.dtype == x.dtype and (x.dtype == torch.float32 or x.is_cuda)


def norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fused: bool) -> torch.Tensor:
    """RMS norm with float32 statistics (transformers' LlamaRMSNorm arithmetic: scale in x's dtype);
    ``fused``: PyTorch's own op (see ``can_fuse_norm``)."""
    if fused:
        return torch.rms_norm(x, [x.shape[-1]], weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def decode_layers(
    kind: int,
    h: torch.Tensor,
    attn_norms: List[torch.Tensor],
    mlp_norms: List[torch.Tensor],
    matrices: List[torch.Tensor],
    packed: "List[torch.classes.quantized.LinearPackedParamsBase]",
    biases: List[torch.Tensor],
    keys: List[torch.Tensor],
    values: List[torch.Tensor],
    rope: torch.Tensor,
    mask: Optional[torch.Tensor],
    slot: int,
    eps: float,
    fused_norm: bool,
    heads: int,
    kv_heads: int,
    head_dim: int,
    matmul_dtype: torch.dtype,
    cache_dtype: torch.dtype,
) -> torch.Tensor:
    """Run every layer for one new token per row; return the residual stream ``h`` (rows, hidden).

    ``h``: the token embeddings, updated in place. Matrices 4i..4i+3 (in ``matrices`` or ``packed``, by
    ``kind``) are layer i's fused QKV, output, fused gate/up and down projections. ``keys`` / ``values``:
    each layer's cache (rows, kv_heads, capacity, head_dim); slot ``slot`` is written, slots up to it read.
    ``rope``: (rows, head_dim, head_dim) rotation matrices; ``mask``: (rows, 1, 1, slot + 1) bool or None.
    """
    rows = h.shape[0]
    rotated = heads + kv_heads
    groups = heads // kv_heads
    for i in range(len(keys)):
        x = norm(h, attn_norms[i], eps, fused_norm).to(matmul_dtype)
        qkv = product(kind, x, 4 * i, matrices, packed, biases)
        qkv = qkv.view(rows, rotated + kv_heads, head_dim).to(cache_dtype)
        qk = torch.bmm(qkv.narrow(1, 0, rotated), rope)  # queries and keys, rotated
        keys[i].select(2, slot).copy_(qk.narrow(1, heads, kv_heads))
        values[i].select(2, slot).copy_(qkv.narrow(1, rotated, kv_heads))
        key = keys[i].narrow(2, 0, slot + 1)
        value = values[i].narrow(2, 0, slot + 1)
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        attn = F.scaled_dot_product_attention(qk.narrow(1, 0, heads).unsqueeze(2), key, value, attn_mask=mask)
        attn = attn.reshape(rows, heads * head_dim).to(matmul_dtype)
        h.add_(product(kind, attn, 4 * i + 1, matrices, packed, biases))
        x = norm(h, mlp_norms[i], eps, fused_norm).to(matmul_dtype)
        gate, up = product(kind, x, 4 * i + 2, matrices, packed, biases).chunk(2, dim=-1)
        h.add_(product(kind, F.silu(gate).mul_(up), 4 * i + 3, matrices, packed, biases))
    return h


def compile_decode_layers() -> Optional[Callable[..., torch.Tensor]]:
    """``decode_layers`` compiled by TorchScript, or None where that is not possible here."""
    if not HAS_FUSED_RMS_NORM:
        return None
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated as a public API, not removed
            warnings.simplefilter("ignore")
            return torch.jit.script(decode_layers)
    except Exception:  # any compiler failure: the Python function does the same work
        return None
