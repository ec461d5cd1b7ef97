"""The pyramid tower and the two-tower Hadamard logistic-regression head."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureSpec:
    """One sparse categorical input of a tower (part of the unified schema saved with the model)."""

    name: str
    standardizer: str
    vocab_size: int
    max_len: int = 1
    weighted: bool = False
    default_ids: tuple[int, ...] = (0,)
    pad_id: int = 0
    oov_id: int = 1
    kept_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TowerConfig:
    features: tuple[FeatureSpec, ...]
    emb_dim: int = 16
    """Width of each feature's embedding."""
    emb_dims: dict[str, int] = field(default_factory=dict)
    """Per-feature widths that replace emb_dim, e.g. {movie: 32} for a high-cardinality id feature."""
    widths: tuple[int, ...] = (64, 128, 256)
    """Dense layer widths; must not shrink (the pyramid widens)."""
    dim: int = 32
    """Output embedding size d."""
    dropout: float = 0.1
    norm: str = "layer"
    """'layer', 'batch' or 'none' after each dense layer."""
    l2_normalize: bool = False
    """L2-normalise the output (then the head's w carries the scale)."""

    def __post_init__(self):
        if any(b < a for a, b in zip(self.widths, self.widths[1:])):
            raise ValueError(f"pyramid widths must grow layer by layer, got {self.widths}")
        if self.norm not in ("layer", "batch", "none"):
            raise ValueError(f"norm must be layer, batch or none, not {self.norm!r}")


class MaskedMeanEmbedding(nn.Module):
    """nn.Embedding + an explicit masked (weighted) mean. Not nn.EmbeddingBag: that exports to a per-row
    ONNX Loop, about 13x slower in onnxruntime."""

    def __init__(self, spec: FeatureSpec, dim: int):
        super().__init__()
        self.spec = spec
        self.emb = nn.Embedding(spec.vocab_size, dim, padding_idx=spec.pad_id)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        mask = (ids != self.spec.pad_id).to(torch.float32)
        if weights is not None:
            mask = mask * weights
        e = self.emb(ids) * mask.unsqueeze(-1)
        return e.sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-6)


class PyramidTower(nn.Module):
    """Sparse features -> embeddings -> N dense layers with DenseNet-style skip connections (each layer
    sees the tower input and every earlier layer's output) and growing widths -> d-dim embedding."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        widths = {f.name: int(cfg.emb_dims.get(f.name, cfg.emb_dim)) for f in cfg.features}
        self.embeddings = nn.ModuleDict({f.name: MaskedMeanEmbedding(f, widths[f.name]) for f in cfg.features})
        width_in = sum(widths.values())
        self.layers = nn.ModuleList()
        seen = width_in
        for w in cfg.widths:
            norm = {"layer": nn.LayerNorm(w), "batch": nn.BatchNorm1d(w), "none": nn.Identity()}[cfg.norm]
            self.layers.append(nn.Sequential(nn.Linear(seen, w), norm, nn.ReLU(), nn.Dropout(cfg.dropout)))
            seen += w
        self.out = nn.Linear(seen, cfg.dim)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.embeddings[f.name](feats[f.name], feats.get(f"{f.name}__weight") if f.weighted else None)
                 for f in self.cfg.features]
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)  # skip connections: keep everything seen so far
        y = self.out(x)
        return nn.functional.normalize(y, dim=1) if self.cfg.l2_normalize else y

    def input_names(self) -> list[str]:
        names = []
        for f in self.cfg.features:
            names.append(f.name)
            if f.weighted:
                names.append(f"{f.name}__weight")
        return names


class PositionalTower(nn.Module):
    """Export wrapper: ONNX inputs are positional, in manifest order."""

    def __init__(self, tower: PyramidTower):
        super().__init__()
        self.tower = tower
        self.names = tower.input_names()

    def forward(self, *tensors):
        return self.tower(dict(zip(self.names, tensors)))


class HadamardHead(nn.Module):
    """score = sigmoid(w . (x_member * x_job) + b); returns the logit."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, 1)

    def forward(self, member: torch.Tensor, job: torch.Tensor) -> torch.Tensor:
        return self.lin(member * job).squeeze(-1)
