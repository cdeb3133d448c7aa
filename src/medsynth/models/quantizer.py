"""A vector quantiser with cosine-distance lookup, straight-through gradients, usage metrics and dead-entry revival.

For encoder outputs ``z`` ``(B, D, h, w)`` and a trainable codebook ``e`` ``(N, D)``, every vector
and entry is scaled to unit length (l2), so that the nearest entry by Euclidean distance is the one
of largest cosine similarity. With ``k = argmax_j <z_n, e_n[j]>`` and ``q = e_n[k]``:

- codebook loss ``mean((q - sg[z_n])^2)`` moves the chosen entries towards the encoder outputs,
- commitment loss ``mean((z_n - sg[q])^2)`` keeps the encoder near its entries; the caller weights it
  by beta (0.25). (taming-transformers' ``legacy=True`` puts beta on the codebook term instead; here
  beta is on the commitment term, as in van den Oord et al. 2017.)
- the output is ``z_n + sg[q - z_n]``: the value of ``q`` with the gradient of ``z_n``
  (straight-through estimator).

Usage: ``perplexity = exp(-sum p_j log p_j)`` of the entries' frequencies in the batch (N when every
entry is used equally, 1 when one entry takes everything), and `usage` the fraction of entries
chosen at least once within the last `USAGE_WINDOW` training steps.

Revival (`revive`): an entry neither chosen nor revived within the last `after` steps is dead and
is replaced by an encoder output of the current batch, drawn uniformly (torch's global generator,
which the trainer seeds per step). Placed where the data are, it is chosen again soon. Under
torch.distributed every rank takes the latest use over all ranks and rank 0's replacements, so the
codebooks stay identical.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

USAGE_WINDOW = 100
"""Steps over which `VectorQuantizer.usage` counts an entry as used."""


class Quantized(NamedTuple):
    """What `VectorQuantizer.forward` returns (a tuple, so that DistributedDataParallel passes it through)."""

    z_q: torch.Tensor
    """``(B, D, h, w)`` quantised vectors (unit length), with straight-through gradients."""
    indices: torch.Tensor
    """``(B, h, w)`` chosen entries (int64)."""
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    """Unweighted; the caller multiplies it by beta."""
    perplexity: torch.Tensor
    latents: torch.Tensor
    """``(B, D, h, w)`` the encoder outputs scaled to unit length (what dead entries are revived from)."""


def unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)


class VectorQuantizer(nn.Module):
    """``(B, D, h, w)`` encoder outputs -> `Quantized`; a codebook of `size` entries of `dim` values."""

    def __init__(self, size: int = 1024, dim: int = 256) -> None:
        super().__init__()
        self.size, self.dim = size, dim
        self.codebook = nn.Embedding(size, dim)
        nn.init.normal_(self.codebook.weight)
        # Step at which each entry was last chosen (-1: never) and last (re)initialised.
        self.register_buffer("last_chosen", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("born", torch.zeros(size, dtype=torch.long))

    def entries(self) -> torch.Tensor:
        """``(N, D)`` the codebook scaled to unit length."""
        return unit(self.codebook.weight, dim=1)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"encoder outputs have {d} channels but the codebook's entries have {self.dim}")
        z_n = unit(z.float(), dim=1)
        flat = z_n.permute(0, 2, 3, 1).reshape(-1, d)
        codebook = self.entries()
        indices = (flat @ codebook.t()).argmax(dim=1)
        q = codebook[indices].view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(q, z_n.detach())
        commitment_loss = F.mse_loss(z_n, q.detach())
        z_q = z_n + (q - z_n).detach()
        return Quantized(
            z_q, indices.view(b, h, w), codebook_loss, commitment_loss, perplexity(indices, self.size), z_n.detach()
        )

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` entry indices -> ``(B, D, h, w)`` unit vectors."""
        return self.entries()[indices].permute(0, 3, 1, 2)

    @torch.no_grad()
    def record(self, indices: torch.Tensor, step: int) -> None:
        """Note that the entries in `indices` were chosen at training step `step`."""
        self.last_chosen[torch.unique(indices)] = step

    def usage(self, step: int) -> float:
        """Fraction of entries chosen at least once in the `USAGE_WINDOW` steps up to `step`."""
        recent = (self.last_chosen >= 0) & (self.last_chosen > step - USAGE_WINDOW)
        return float(recent.float().mean())

    @torch.no_grad()
    def revive(self, latents: torch.Tensor, step: int, after: int) -> int:
        """Replace entries unused for `after` steps by random vectors of `latents` ``(B, D, h, w)``; how many."""
        if after <= 0:
            return 0
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(self.last_chosen, op=dist.ReduceOp.MAX)
        dead = (step - torch.maximum(self.last_chosen, self.born)) >= after
        count = int(dead.sum())
        if count:
            pool = latents.permute(0, 2, 3, 1).reshape(-1, self.dim)
            picks = torch.randint(pool.shape[0], (count,)).to(pool.device)
            self.codebook.weight[dead] = pool[picks].to(self.codebook.weight.dtype)
            self.born[dead] = step
            if distributed:
                dist.broadcast(self.codebook.weight.data, src=0)
        return count


def perplexity(indices: torch.Tensor, size: int) -> torch.Tensor:
    """``exp(entropy)`` of the frequencies of `indices` over `size` entries (a scalar tensor)."""
    p = torch.bincount(indices.flatten(), minlength=size).float()
    p = p / p.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
