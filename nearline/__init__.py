"""Nearline embedding service: keeps pre-computed entity embeddings fresh in Redis and on Kafka."""

from pathlib import Path

__version__ = "0.1.0"

# The repository root holds schemas/, models/ and nearline.yaml next to this package; the project is
# installed editable (`pip install -e .`), so these paths are the checked-out files themselves.
REPO_ROOT = Path(__file__).resolve().parent.parent
