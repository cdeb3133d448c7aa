"""An autoregressive transformer prior over VQGAN token maps, for sampling new images (the second stage).

As taming-transformers' unconditional transformer, scaled down: a token map ``(h, w)`` is read in
raster order as a sequence of ``L = h * w`` codebook indices, preceded by a start token; a decoder-only
transformer (pre-norm blocks of causal self-attention and a 4x GELU MLP, learned positions) predicts
each index from the ones before it, trained with cross entropy. Sampling draws one index at a time
from the softmax (temperature 1, no top-k: the prior's own distribution), keeping each layer's keys
and values so that a step costs one position, not the whole prefix. Weights start N(0, 0.02).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    """``(B, T, dim)`` -> ``(B, T, dim)``; with a cache of the earlier positions' keys and values."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"prior width {dim} must be a multiple of its {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        heads = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (part.view(b, t, self.heads, d // self.heads).transpose(1, 2) for part in heads)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # With a cache, the new positions come last and may see every cached one.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and t > 1)
        return self.proj(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class PriorBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.attention(self.norm1(x), past)
        x = x + attended
        return x + self.mlp(self.norm2(x)), present


class TokenPrior(nn.Module):
    """Logits ``(B, T, vocab)`` of the next index from ``(B, T)`` inputs (start token ``vocab`` then indices)."""

    def __init__(self, vocab: int, length: int, dim: int = 256, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.vocab, self.length = vocab, length
        self.embed = nn.Embedding(vocab + 1, dim)  # the last id is the start token
        self.position = nn.Parameter(torch.zeros(1, length, dim))
        self.blocks = nn.ModuleList(PriorBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.apply(_init)
        nn.init.normal_(self.position, 0.0, 0.02)

    @property
    def start_token(self) -> int:
        return self.vocab

    def inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` target indices -> ``(B, L)`` inputs: the start token, then all but the last index."""
        start = torch.full_like(tokens[:, :1], self.start_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(
        self, inputs: torch.Tensor, past: KVCache | None = None, offset: int = 0
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits of `inputs` at positions ``offset ..``, and the updated cache (keys and values per layer)."""
        x = self.embed(inputs) + self.position[:, offset : offset + inputs.shape[1]]
        cache = []
        for k, block in enumerate(self.blocks):
            x, present = block(x, past[k] if past is not None else None)
            cache.append(present)
        return self.head(self.norm(x)), cache

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, L)`` indices drawn one position at a time; the draws come from `generator` (on CPU)."""
        device = self.position.device
        token = torch.full((n, 1), self.start_token, dtype=torch.long, device=device)
        out = torch.empty(n, self.length, dtype=torch.long)
        cache: KVCache | None = None
        for position in range(self.length):
            logits, cache = self(token, cache, position)
            probs = torch.softmax(logits[:, -1].float(), dim=-1).cpu()
            out[:, position] = torch.multinomial(probs, 1, generator=generator)[:, 0]
            token = out[:, position : position + 1].to(device)
        return out


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy (nats per token) of logits ``(B, L, vocab)`` for ``(B, L)`` target indices."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
