"""Entity features as the towers read them in training: one tensor of embedding rows per feature and side
(the unified schema), the declared defaults for features a task lacks, and how many values fell outside
each feature's vocabulary (mapped to the OOV row, as serving maps them too)."""

from __future__ import annotations

import numpy as np
import torch

from nearline.models.data import EntityTable, encode_rows
from nearline.models.tower import FeatureSpec

SIDES = ("member", "job")


def oov_counts(spec: FeatureSpec, taxonomy_ids: np.ndarray) -> dict:
    """Values of one feature (padding excluded) that map to the OOV row, and the entities with at least one."""
    present = taxonomy_ids >= 0
    oov = (encode_rows(spec, taxonomy_ids) == spec.oov_id) & present
    return {"values": int(present.sum()), "oov_values": int(oov.sum()), "entities": int(len(taxonomy_ids)),
            "entities_with_oov": int(oov.any(axis=1).sum())}


class FeatureStore:
    """Entity features as ready tensors of embedding rows (the unified schema), per side."""

    def __init__(self, tables: dict[str, EntityTable], schema: dict[str, dict[str, FeatureSpec]]):
        self.schema = schema
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.defaults: dict[str, dict[str, torch.Tensor]] = {}
        for side in SIDES:
            t = tables[side]
            d, dflt = {}, {}
            for name, spec in schema[side].items():
                ids = t.features[name][:, : spec.max_len]
                d[name] = torch.from_numpy(encode_rows(spec, ids))
                if spec.weighted:
                    d[f"{name}__weight"] = torch.from_numpy(t.weights[name][:, : spec.max_len].copy())
                dv = np.full((1, spec.max_len), -1, dtype=np.int64)
                dv[0, : len(spec.default_ids)] = spec.default_ids[: spec.max_len]
                dflt[name] = torch.from_numpy(encode_rows(spec, dv))
                if spec.weighted:
                    dflt[f"{name}__weight"] = (dflt[name] != spec.pad_id).float()
            self.rows[side], self.defaults[side] = d, dflt
        # per side and feature: how many values fell outside the vocabulary (counted, not silently mapped)
        self.oov = {side: {name: oov_counts(spec, tables[side].features[name][:, : spec.max_len])
                           for name, spec in schema[side].items()} for side in SIDES}

    def oov_lines(self, entity_types: dict[str, str] | None = None) -> list[str]:
        """One line per feature with values outside its vocabulary (nothing when every value is known)."""
        out = []
        for side, feats in self.oov.items():
            for name, c in feats.items():
                if c["oov_values"]:
                    out.append(f"{(entity_types or {}).get(side, side)}.{name}: {c['oov_values']} of {c['values']} "
                               f"values outside the vocabulary ({c['oov_values'] / max(c['values'], 1):.1%}; "
                               f"{c['entities_with_oov']} of {c['entities']} entities), mapped to the OOV row")
        return out

    def batch(self, side: str, idx: torch.Tensor, present: set[str]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.schema[side]:
            keys = [name] + ([f"{name}__weight"] if f"{name}__weight" in self.rows[side] else [])
            for k in keys:
                if name in present:
                    out[k] = self.rows[side][k][idx]
                else:  # the task's data lacks this feature: the declared default fills it
                    out[k] = self.defaults[side][k].expand(len(idx), -1)
        return out
