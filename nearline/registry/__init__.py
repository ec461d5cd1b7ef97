"""The model package contract and the registry file: the one thing training and serving share.

    manifest   what a package is: ``tower.onnx`` + ``manifest.json`` (Manifest, InputFeature, ModelPackage)
    features   standardized features -> the exact tensors a manifest describes (pure numpy, no I/O)
    check      does a package load and run (shape checks and a probe feed through onnxruntime)
    packages   ``models/registry.yaml``: one line per registered version (Registry)

May import: ``nearline.core``. Imported by training (``nearline.models``), serving and the offline path.
"""
