"""MoCo v2 side of KCL/TSC at scale: a momentum key encoder, a queue of labelled keys, and the
KCL/TSC loss over them (LTH14/targeted-supcon@c4f15eb:moco/builder.py, `KCL`; He et al. 2020).

One process holds the whole batch, so the DDP pieces of the official code (all_gather, the
batch shuffle that keeps BatchNorm from seeing a query and its key together) have no
counterpart: the key encoder's BatchNorm sees the plain key batch. The queue is a ring that
takes any batch size (the official code asserts queue_size % batch == 0).
"""
from __future__ import annotations

import copy
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from ltbench.contrastive import kcl_positive_mask


class KeyEncoder(nn.Module):
    """A gradient-free copy of (encoder, head) that follows the query side by exponential
    moving average of its parameters, plus a ring queue of its normalised keys and their labels.

    Queue slots start as random unit vectors with label -1: negatives for every anchor and
    positives of none until real keys replace them, as in the official code.
    """

    def __init__(self, encoder, head, dim, queue_size=65536, momentum=0.999):
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.head = copy.deepcopy(head).requires_grad_(False)
        self.momentum = momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def follow(self, encoder, head):
        """theta_k <- m theta_k + (1 - m) theta_q over parameters (BatchNorm statistics stay the key side's own)."""
        mine = chain(self.encoder.parameters(), self.head.parameters())
        for k, q in zip(mine, chain(encoder.parameters(), head.parameters()), strict=True):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def keys(self, x):
        return F.normalize(self.head(self.encoder(x)), dim=1)

    @torch.no_grad()
    def enqueue(self, keys, labels):
        n, size = len(keys), len(self.queue)
        if n > size:
            raise ValueError(f"KeyEncoder.enqueue: a batch of {n} keys does not fit a queue of {size}; "
                             "raise queue_size or lower batch_size")
        slots = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_labels[slots] = labels.long()
        self.queue_ptr.copy_((self.queue_ptr + n) % size)


def kcl_moco_loss(q, k, y, queue, queue_labels, temperature=0.07, num_positive=6, generator=None,
                  targets=None, target_labels=None, target_weight=1.0):
    """KCL / TSC loss of one batch of queries (LTH14/targeted-supcon@c4f15eb:moco/builder.py, `KCL.forward`).

    q, k: B x d normalised queries and their keys (another view of the same image), y: B;
    queue: Q x d with labels queue_labels (Q,); targets: M x d with labels target_labels (M,),
    i.e. each class's assigned target repeated `tr` times (omit both for KCL). For anchor i
    the columns are [k_i, queue_1..Q, targets_1..M] and

        log p_ij = q_i.c_j / t - log sum_l exp(q_i.c_l / t)       (l over all 1 + Q + M columns)
        P_i  = {k_i} + num_positive queue entries of class y_i drawn uniformly without
               replacement (all of them when fewer exist; all when num_positive = 0)
        T_i  = the target columns labelled y_i
        L_i  = -( sum_{p in P_i} log p_ip + target_weight * sum_{p in T_i} log p_ip ) / (|P_i| + |T_i|)

    and the loss is the mean of L_i. The common denominator |P_i| + |T_i| is the official
    code's (`--sep_t`); the paper writes the target term apart with weight lambda. Every target
    is a negative for every anchor. Keys and queue carry no gradient.
    """
    B = q.shape[0]
    columns = [(q * k.detach()).sum(1, keepdim=True), q @ queue.detach().T]
    if targets is not None:
        columns.append(q @ targets.to(q.dtype).T)
    log_prob = torch.log_softmax(torch.cat(columns, 1) / temperature, dim=1)

    same = y[:, None] == queue_labels[None, :]
    if num_positive > 0:
        same = kcl_positive_mask(same, torch.zeros_like(same), num_positive, generator)
    key = torch.ones(B, 1, dtype=torch.bool, device=q.device)
    if targets is None:
        positive, target_pos = torch.cat([key, same], 1), None
    else:
        target_pos = y[:, None] == target_labels.to(y.device)[None, :]
        positive = torch.cat([key, same, torch.zeros_like(target_pos)], 1)
    pos_term = (log_prob * positive).sum(1)
    count = positive.sum(1)
    if target_pos is not None:
        pos_term = pos_term + target_weight * (log_prob[:, -target_pos.shape[1]:] * target_pos).sum(1)
        count = count + target_pos.sum(1)
    return -(pos_term / count).mean()
