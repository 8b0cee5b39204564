"""Data-parallel training over the GPUs of one job: `torchrun --nproc_per_node N -m ltbench.cli train …`.

torchrun starts one process per GPU and sets WORLD_SIZE, RANK and LOCAL_RANK; `setup` reads them
and joins the process group (NCCL on GPUs, Gloo on CPUs). Without them everything here is the
identity and a run is the plain single-process one.

How a run stays the same run under N processes:
- every rank draws the epoch's whole index order from the same seeded generator; global batch b
  is positions b*B .. (b+1)*B of it and rank r trains on the r-th of its N equal parts
  (`rank_slices`), so the ranks see disjoint images and together exactly the global batch;
- DDP averages the gradients of the per-rank mean losses, which is the gradient of the global
  mean loss because the parts are equal; BatchNorm becomes SyncBatchNorm, so batch statistics
  are over the global batch too;
- evaluation is split the same way and the logits gathered, so every rank holds the same metrics;
  rank 0 alone writes checkpoints, result.json and MLflow records.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist
from torch import nn


def world():
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank():
    return tdist.get_rank() if tdist.is_initialized() else 0


def is_main():
    return rank() == 0


def setup(device="auto"):
    """The training device; joins the process group when torchrun started this process.

    `device` is the config's (auto | cpu | cuda | cuda:k): under torchrun a GPU run puts rank r on
    cuda:LOCAL_RANK and talks NCCL, a CPU run talks Gloo.
    """
    wanted = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return wanted
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(f"WORLD_SIZE is set but {key} is not: start multi-GPU training with "
                             f"`torchrun --nproc_per_node N -m ltbench.cli train …`")
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(wanted)
        tdist.init_process_group("nccl", device_id=wanted)
    else:
        tdist.init_process_group("gloo")
    return wanted


def close():
    if tdist.is_initialized():
        tdist.destroy_process_group()


def local_workers():
    """DataLoader processes per rank when the config leaves it to us: this job's CPUs shared
    among the ranks on this node, one kept for the training process itself."""
    cpus = len(os.sched_getaffinity(0))
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)


# ----------------------------------------------------------------------------- sharding

def rank_slices(n, batch_size, drop_last):
    """(start, stop) positions in an epoch's order of n indices, one per step, for this rank.

    batch_size is the global batch. Each global batch is cut into `world()` equal contiguous
    parts and this rank keeps its part. With drop_last off, a short last batch keeps the largest
    multiple of world() images it has (up to world() - 1 images of the epoch go unused), so every
    rank's loss is a mean over as many images and the averaged gradient is the global batch's.
    """
    w, r = world(), rank()
    if batch_size % w:
        raise ValueError(f"batch_size {batch_size} cannot be split evenly over {w} processes: set a batch_size "
                         f"divisible by {w} (it is the global batch; each process takes batch_size / {w})")
    end = n // batch_size * batch_size if drop_last else n - (n % batch_size) % w
    out = []
    for start in range(0, end, batch_size):
        part = (min(start + batch_size, end) - start) // w
        out.append((start + r * part, start + (r + 1) * part))
    return out


def share(n):
    """This rank's contiguous [lo, hi) of n items (evaluation): near-equal parts, rank order."""
    w, r = world(), rank()
    return n * r // w, n * (r + 1) // w


def gather_rows(t):
    """The ranks' row blocks of `t`, concatenated in rank order on every rank (for `share` parts).
    No gradient flows back."""
    if world() == 1:
        return t
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world())]
    tdist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world())]
    tdist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def mean(t):
    """Mean of a tensor over the ranks (detached); the tensor itself on one process."""
    if world() == 1:
        return t
    t = t.detach().clone()
    tdist.all_reduce(t)
    return t / world()


# ----------------------------------------------------------------------------- model

class Objective(nn.Module):
    """A method's training loss as a module forward, so DistributedDataParallel can wrap it:
    DDP syncs gradients only for what runs inside its wrapped forward."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, y, step):
        return self.method.loss(views, y, step)


def loss_function(method, device):
    """`method.loss` on one process; under torchrun the same loss through DDP.

    find_unused_parameters: a method may leave trainable parameters out of a step (a head used only
    in some epochs). Buffers are DDP's default: rank 0's are broadcast before every step, so ranks
    never drift apart and the checkpoint holds rank 0's; statistics a method accumulates inside its
    loss (ProCo's vMF estimators, TDE's moving-average feature) therefore come from rank 0's part
    of each global batch unless the method all-reduces them itself (`mean`, `gather_rows`).
    """
    if world() == 1:
        return method.loss
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(Objective(method), device_ids=ids, find_unused_parameters=True)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the gradient: each rank's input
    feeds every rank's output, so its gradient is the sum of theirs."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        tdist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        tdist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (Gloo), where torch's SyncBatchNorm does
    not run (and DDP refuses it): the mean, then the centred variance, each summed over ranks by an
    all-reduce that gradients flow back through, as one-process BatchNorm computes them."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x):
        if not (self.training and world() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype, x = x.dtype, x.float()   # statistics in float32 under bf16 autocast, as torch's BatchNorm
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        tdist.all_reduce(count)
        mu = _SumOverRanks.apply(x.sum(dims)) / count
        xc = x - mu.view(shape)
        var = _SumOverRanks.apply((xc * xc).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mu, m)
                self.running_var.lerp_(var * (count / (count - 1)), m)
        out = xc * torch.rsqrt(var + self.eps).view(shape)
        return (out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out).to(dtype)


def sync_batchnorm(module, device):
    """Every BatchNorm layer of `module` made to use global-batch statistics: torch's SyncBatchNorm
    on GPUs, `CPUSyncBatchNorm` on CPUs; parameters and buffers are shared, so state_dict keys
    stay. A no-op on one process."""
    if world() == 1:
        return module
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, sync_batchnorm(child, device))
    return module
