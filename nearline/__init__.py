"""Nearline embedding service: keeps pre-computed entity embeddings fresh in Redis and on Kafka."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
# The repository root holds schemas/, models/ and nearline.yaml next to this package (a checkout with
# the editable install, `pip install -e .`).
REPO_ROOT = PACKAGE_DIR.parent
# Where the files the code reads at run time live: installed from a wheel, the repository's schemas/
# and models/ folders are the packages nearline.schemas and nearline.models (pyproject's package-dir),
# so they sit inside this package; in a checkout they are the repository's own folders.
DATA_ROOT = PACKAGE_DIR if (PACKAGE_DIR / "schemas").is_dir() else REPO_ROOT
