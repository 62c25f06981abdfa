"""Which dtype each phase computes in, and which matrix kernels this PyTorch has.

CPU dtype policy (measured on a 2-core Zen 4 with AVX512-BF16; numbers in README): decoding is bound by
reading the weights once per token, prompt processing by matmul throughput. Prompt processing and batched
decoding run in bfloat16 with the matrices prepacked once into oneDNN's blocked layout (unpacked, oneDNN
re-packs the weights on every call, which dominates when only a few rows go through); one-row decoding runs
in float32 over float16 matrices prepacked for FBGEMM (16-bit reads without conversion ops; without FBGEMM:
PyTorch's float16 matrix-vector kernel; float16 matmuls with many rows are ~20x slower). The KV cache is
float32 (PyTorch's fused CPU attention is several times slower in 16-bit dtypes) and so is the residual
stream. ``dtype="int8"`` (opt-in) decodes over int8 matrices instead: half the bytes per token. Without
AVX512-BF16, prompts and batches run in float32. On CUDA one 16-bit dtype (bfloat16 where supported) serves
every phase.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = value.lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name not in DTYPE_NAMES:
        raise ValueError(
            f"unknown dtype {value!r}; choose one of: auto, float32, bfloat16, float16, int8 (CPU, quantized)"
        )
    return DTYPE_NAMES[name]


def is_int8(value: str | torch.dtype | None) -> bool:
    return isinstance(value, str) and value.lower() == "int8"


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN can run bfloat16 matmuls natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def packed_linear_available() -> bool:
    """oneDNN's prepacked linear (what ``torch.compile`` uses on CPUs after freezing) exists here."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._reorder_linear_weight)
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=2)
def fbgemm_available(kind: str) -> bool:
    """FBGEMM's float16-weight or int8-weight linear (``quantized::linear_dynamic[_fp16]``) runs here."""
    from .matrices import MATRIX_FORMATS

    try:
        out = MATRIX_FORMATS[f"fbgemm-{kind}"](torch.ones(8, 8), None)(torch.ones(1, 8))
    except (AttributeError, RuntimeError):
        return False
    return bool(out.shape == (1, 8) and torch.allclose(out, torch.full((1, 8), 8.0), rtol=0.05))


@dataclass(frozen=True)
class DTypePolicy:
    """Compute dtype per phase (prompt processing, one-row decoding, several-row decoding) and KV cache dtype.

    ``cache`` / ``batch_cache``: dtype of the keys/values for one row / several rows; attention runs in it.
    None means the decode dtype of that batch size.
    """

    prefill: torch.dtype
    decode: torch.dtype
    batch_decode: torch.dtype
    cache: torch.dtype | None = None
    batch_cache: torch.dtype | None = None
    pack: bool = False  # CPU: oneDNN-prepacked bfloat16/float32 matrices
    # CPU, float32 decoding (one row or several, whichever phase decodes in float32) over matrices
    # prepacked for FBGEMM: "float16" (weights rounded to float16) or "int8" (opt-in quantization);
    # None: plain matrices.
    decode_matrices: str | None = None

    def for_rows(self, rows: int) -> torch.dtype:
        """Decode compute dtype of a batch of ``rows`` sequences."""
        return self.decode if rows == 1 else self.batch_decode

    def cache_for_rows(self, rows: int) -> torch.dtype:
        chosen = self.cache if rows == 1 else self.batch_cache
        return chosen or self.for_rows(rows)

    @classmethod
    def uniform(cls, dtype: torch.dtype) -> DTypePolicy:
        return cls(dtype, dtype, dtype)

    @classmethod
    def for_device(cls, device: torch.device, dtype: torch.dtype | None = None) -> DTypePolicy:
        if dtype is not None and device.type == "cpu":
            # PyTorch's CPU attention kernels are several times slower in 16-bit dtypes: float32 cache.
            return replace(
                cls.uniform(dtype),
                pack=packed_linear_available(),
                cache=torch.float32,
                batch_cache=torch.float32,
            )
        if dtype is not None:
            return cls.uniform(dtype)
        if device.type == "cuda":
            return cls.uniform(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type != "cpu":
            return cls.uniform(torch.float32)
        packed = packed_linear_available()
        matrices = "float16" if fbgemm_available("float16") else None
        if cpu_has_fast_bf16():
            # Many rows per matmul (prompt, batches): prepacked bfloat16. One row without FBGEMM: float16's
            # matrix-vector kernel, the fastest 16-bit one of plain PyTorch.
            return cls(
                prefill=torch.bfloat16,
                decode=torch.float32 if matrices else torch.float16,
                batch_decode=torch.bfloat16,
                cache=torch.float32,
                batch_cache=torch.float32,
                pack=packed,
                decode_matrices=matrices,
            )
        f32 = torch.float32
        return cls(f32, f32, f32, cache=f32, batch_cache=f32, pack=packed, decode_matrices=matrices)


def policy_for(device: torch.device, dtype: str | torch.dtype | None) -> DTypePolicy:
    """The policy for a backend's ``dtype`` argument (a dtype name, "auto"/None, or "int8")."""
    if not is_int8(dtype):
        return DTypePolicy.for_device(device, parse_dtype(dtype))
    if device.type != "cpu":
        raise ValueError(
            f"dtype='int8' (FBGEMM int8 matrices) is a CPU option; use auto or float16 on {device.type}"
        )
    if not fbgemm_available("int8"):
        raise ValueError("dtype='int8' needs PyTorch's FBGEMM int8 linear, which this PyTorch lacks")
    # Quantized decoding (one row and batches); prompt processing as in the automatic policy.
    return replace(
        DTypePolicy.for_device(device),
        decode=torch.float32,
        batch_decode=torch.float32,
        decode_matrices="int8",
    )


def matrix_format(policy: DTypePolicy, device: torch.device, dtype: torch.dtype, decoding: bool) -> str:
    """How the matrices of a ``dtype`` pass are stored (a key of ``matrices.MATRIX_FORMATS``)."""
    if device.type != "cpu":
        return "dense"
    if decoding and dtype == torch.float32 and policy.decode_matrices:
        return f"fbgemm-{policy.decode_matrices}"
    return "onednn" if policy.pack and dtype != torch.float16 else "dense"
