"""Half-precision models on CPUs without a native half-precision matmul.

Without AVX-512 BF16/FP16 (oneDNN's test), torch multiplies bfloat16 and float16 matrices on a slow
path: 9x (bfloat16) and 8x (float16) slower than float32 for a smollm2-sized layer on an AVX2 CPU.
`float32_matmuls` keeps a model's weights and activations in half precision (its memory) but runs
each matrix product in float32 and rounds the result back once, so every tensor the model makes
keeps its dtype (benchmarks/bench_half.py measures the speed).

Memory stays half precision's: a product with a weight matrix goes through `HalfLinear`, which copies
the weight to float32 a block of rows at a time (which is also faster than copying it whole) and
keeps only the half-precision operands for the backward pass.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

HALF = (torch.bfloat16, torch.float16)
BLOCK = 2048  # output features computed at once: a float32 copy of that many weight rows at a time
MATMULS: frozenset[Callable] = frozenset({
    F.scaled_dot_product_attention, torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.addmm,
    torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm,
})
PRODUCTS: frozenset[Callable] = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__})


def native_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively (float32 always; half by oneDNN's test)."""
    test = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
            torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    return test is None or bool(test())


def _up(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in HALF else value


def _blocks(n: int) -> range:
    return range(0, n, BLOCK)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` in float32, rounded to ``x``'s dtype; ``BLOCK`` output features at a time, so a
    weight is never copied to float32 whole (a vocabulary's unembedding would be 113 MB for smollm2)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    for j in _blocks(weight.shape[0]):
        block = rows @ weight[j:j + BLOCK].float().T
        out[:, j:j + BLOCK] = block if bias is None else block + bias[j:j + BLOCK].float()
    return out.reshape(*x.shape[:-1], weight.shape[0])


class HalfLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for half-precision operands, computed in float32 (backward too),
    keeping only the half-precision operands for the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        rows = x.reshape(-1, x.shape[-1]).float()
        grad_x = torch.zeros_like(rows) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for j in _blocks(weight.shape[0]):
            g = grad_rows[:, j:j + BLOCK].float()
            if grad_x is not None:
                grad_x += g @ weight[j:j + BLOCK].float()
            if grad_w is not None:
                grad_w[j:j + BLOCK] = g.T @ rows
        grad_b = grad_rows.float().sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return None if grad_x is None else grad_x.to(x.dtype).reshape(x.shape), grad_w, grad_b


class Float32Matmul(TorchFunctionMode):
    """Inside it, a matrix product whose first tensor is half precision on the CPU runs in float32 and
    its result is rounded back to that dtype; every other operation is untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func in MATMULS or func in PRODUCTS:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None and first.dtype in HALF and first.device.type == "cpu":
                if func is F.linear:
                    bias = args[2] if len(args) > 2 else kwargs.get("bias")
                    return HalfLinear.apply(args[0], args[1], bias)
                if func in PRODUCTS and len(args) == 2 and args[1].dim() == 2 and args[0].dim() >= 2:
                    return HalfLinear.apply(args[0], args[1].mT, None)  # x @ W is linear(x, W.T)
                return func(*map(_up, args), **{k: _up(v) for k, v in kwargs.items()}).to(first.dtype)
        return func(*args, **kwargs)


def float32_matmuls(module: torch.nn.Module) -> list[Any]:
    """Make every call of ``module`` (its forward, hence generation too) run its matrix products in
    float32 (`Float32Matmul`); returns the hook handles (``.remove()`` them to undo)."""
    mode = Float32Matmul()

    def enter(_module, _args) -> None:  # a pre-hook's return value would replace the arguments
        mode.__enter__()

    def leave(_module, _args, _out) -> None:
        mode.__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
