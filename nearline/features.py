"""Standardized features -> the exact tensors a model's manifest describes. Pure numpy, no I/O."""

from __future__ import annotations

import numpy as np

from nearline.registry import InputFeature, Manifest


class FeatureShapeError(ValueError):
    """Features that do not fit the manifest (wrong types, mismatched weights): dead-lettered."""


class FeatureEncoder:
    """Maps taxonomy ids to embedding rows of one input feature (vocab clipping to OOV, kept-id maps)."""

    def __init__(self, f: InputFeature):
        self.f = f
        self.lookup = None
        if f.kept_ids is not None:
            self.lookup = {int(t): i + 2 for i, t in enumerate(f.kept_ids)}

    def rows(self, ids) -> list[int]:
        f = self.f
        out = []
        for t in ids[: f.max_len]:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise FeatureShapeError(f"feature {f.name}: taxonomy id {t!r} is not a non-negative integer")
            r = self.lookup.get(int(t), f.oov_id) if self.lookup is not None else int(t) + 2
            out.append(r if r < f.vocab_size else f.oov_id)
        return out


def build_inputs(manifest: Manifest, rows: list[dict], encoders: dict[str, FeatureEncoder] | None = None) -> dict[str, np.ndarray]:
    """``rows``: one dict per entity, feature name -> {'ids': [...], 'weights': [...] | None}.
    A missing feature uses the manifest's ``default_ids``. Returns the ONNX feed dict."""
    n = len(rows)
    feed: dict[str, np.ndarray] = {}
    for f in manifest.inputs:
        enc = encoders[f.name] if encoders else FeatureEncoder(f)
        ids = np.full((n, f.max_len), f.pad_id, dtype=np.int64)
        w = np.zeros((n, f.max_len), dtype=np.float32) if f.weighted else None
        for i, row in enumerate(rows):
            feat = row.get(f.name)
            if feat is None:
                raw, weights = f.default_ids, None
            else:
                if not isinstance(feat, dict):
                    raise FeatureShapeError(f"feature {f.name}: must be a record with ids, got {type(feat).__name__}")
                raw, weights = feat.get("ids"), feat.get("weights")
                if not isinstance(raw, (list, tuple)):
                    raise FeatureShapeError(f"feature {f.name}: ids must be a list, got {type(raw).__name__}")
                if weights is not None:
                    if not isinstance(weights, (list, tuple)):
                        raise FeatureShapeError(f"feature {f.name}: weights must be a list or null, got {type(weights).__name__}")
                    if len(weights) != len(raw):
                        raise FeatureShapeError(f"feature {f.name}: {len(weights)} weights for {len(raw)} ids")
                    if not all(isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)
                               for x in weights):
                        raise FeatureShapeError(f"feature {f.name}: weights must be numbers")
            r = enc.rows(raw)
            ids[i, : len(r)] = r
            if w is not None:
                w[i, : len(r)] = weights[: len(r)] if weights is not None else 1.0
        feed[f.onnx_input] = ids
        if w is not None:
            feed[f.weight_input] = w
    return feed
