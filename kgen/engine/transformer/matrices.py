"""How one matrix of the model is stored, as small modules that compute ``x @ W.T + b`` for 2-D ``x``.

The format of every matrix of a weight copy is chosen once (``policy.matrix_format``) when the copy is
built; the forward pass only calls the matrices. Each format is a TorchScript-compilable module, so a
scripted model specialises to the formats it holds. ``dense()`` gives back the stored matrix and bias
(float16-rounded or dequantized where the format loses precision) to build another copy from.
"""

# TorchScript reads these annotations: typing.List / Optional, not list[...] / X | None.
# ruff: noqa: UP006, UP007, UP035, UP045
import warnings
from typing import List, Optional, Union

import torch
import torch.nn.functional as F


class DenseMatrix(torch.nn.Module):
    """A plain tensor in the copy's dtype (``F.linear``)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.weight = weight.contiguous()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def dense(self) -> tuple:
        return self.weight, self.bias

    def precision(self) -> tuple:
        return torch.finfo(self.weight.dtype).bits, -torch.finfo(self.weight.dtype).eps


class OneDnnMatrix(torch.nn.Module):
    """A bfloat16/float32 matrix reordered once into oneDNN's blocked layout.

    Unpacked, oneDNN re-packs the weights on every call, which costs more than the matmul itself when only a
    few rows go through (decoding): bfloat16 with 8 rows gets 2-2.5x faster, 1 row ~1.2x.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 8)
        self.bias = bias
        self.dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        no_scalars: List[Optional[Union[int, float, complex]]] = []  # TorchScript's "Scalar?[]"
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", no_scalars, "")

    def dense(self) -> tuple:
        return self.weight.to_dense(), self.bias

    def precision(self) -> tuple:
        return torch.finfo(self.dtype).bits, -torch.finfo(self.dtype).eps


class Fp16PackedMatrix(torch.nn.Module):
    """FBGEMM float16 matrix, float32 activations and outputs: the weights are widened in registers.

    Reading the weights is the cost of one-row decoding: half the bytes of float32, no conversion ops, and
    faster than PyTorch's float16 matrix-vector product with one thread (about as fast with two).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        dense = weight.detach().float().contiguous()
        bias = None if bias is None else bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(dense, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    def dense(self) -> tuple:
        weight, bias = torch.ops.quantized.linear_unpack_fp16(self.packed)
        return weight, bias

    def precision(self) -> tuple:
        return 16, -torch.finfo(torch.float16).eps


class Int8Matrix(torch.nn.Module):
    """FBGEMM int8 matrix: per-output-channel symmetric int8 weights (opt-in, ``dtype="int8"``).

    FBGEMM also quantizes each call's activations to 8 bits (per call, asymmetric, 7-bit range), so results
    differ from the unquantized model beyond rounding; it halves the bytes read per token.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        dense = weight.detach().float().contiguous()
        bias = None if bias is None else bias.detach().float()
        scales = (dense.abs().amax(dim=1).clamp(min=1e-12) / 127).double()
        zero_points = torch.zeros(dense.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated as a public API, not as kernels
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(dense, scales, zero_points, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def dense(self) -> tuple:
        weight, bias = torch.ops.quantized.linear_unpack(self.packed)
        return weight.dequantize(), bias

    def precision(self) -> tuple:
        return 8, 0.0


MATRIX_FORMATS = {
    "dense": DenseMatrix,
    "onednn": OneDnnMatrix,
    "fbgemm-float16": Fp16PackedMatrix,
    "fbgemm-int8": Int8Matrix,
}
FBGEMM_FORMATS = frozenset({"fbgemm-float16", "fbgemm-int8"})  # float32 activations, CPU only
