"""Scoring with every registered tower: ModelSet loads each package in onnxruntime, scores batches (row- or
column-wise) and follows the registry file live (RegistryWatcher). A new model backend (another runtime)
goes beside scoring.py and keeps ModelSet's contract (score / score_columns per model key).

May import: ``nearline.core``, ``nearline.registry``.
"""
