"""Synchronised BatchNorm for every device: ``torch.nn.SyncBatchNorm`` on CUDA, a gloo version on CPU.

PyTorch's SyncBatchNorm only runs on GPUs. Multi-process CPU training (gloo) needs the same statistics
as a single process holding the whole global batch, or its results drift from single-process training;
:class:`CpuSyncBatchNorm` computes them over all ranks with differentiable all-reduces (mean first,
then the centred second moment, the two-pass order that keeps it as exact as the native layer).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a summed statistic is the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batches of every rank in ``group``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        dtype = x.dtype
        x = x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        group = self.group or dist.group.WORLD
        sums = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), count]), group)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply(centred.square().sum((0, 2, 3)), group) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, group=None) -> nn.Module:
    """``module`` with every BatchNorm2d replaced by its synchronised form for ``device``'s type."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, group)
    return _convert_cpu(module, group)


def _convert_cpu(module: nn.Module, group) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, group)
        for name in ("weight", "bias"):  # the same Parameter objects: requires_grad and identity carry over
            if getattr(module, name, None) is not None:
                setattr(synced, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(module, name, None) is not None:
                setattr(synced, name, getattr(module, name))
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child, group))
    return module
