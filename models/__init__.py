"""Offline training: the pyramid two-tower model, the multitask framework, and ONNX export.

Needs the `train` extra (torch==2.13.0). Serving never imports this package: the only thing training
and serving share is the model package (tower.onnx + manifest.json) described in nearline/registry/manifest.py.
"""
