import pytest

torch = pytest.importorskip("torch")

from nearline.models.data import marketplace_source  # noqa: E402
from nearline.models.multitask import TaskConfig, TrainConfig  # noqa: E402

TOWER = {"emb_dim": 8, "widths": [16, 32], "dim": 8, "dropout": 0.0, "norm": "layer"}


def tiny_config(mode="joint", weighting="fixed", tasks=("view", "apply", "inmail"), epochs=2, **kw) -> TrainConfig:
    all_tasks = {
        "view": TaskConfig("view", "view", lr=0.01, batch_size=256),
        "apply": TaskConfig("apply", "apply", lr=0.005, batch_size=128),
        "inmail": TaskConfig("inmail", "inmail", lr=0.02, batch_size=128,
                             features={"member": ["title", "seniority", "skills", "geo"],
                                       "job": ["title", "seniority", "skills", "company", "geo"]}),
    }
    return TrainConfig(source="marketplace", seed=1, mode=mode, weighting=weighting, epochs=epochs, patience=5,
                       architecture={"member_tower": {"name": "member_tower", **TOWER},
                                     "job_tower": {"name": "job_tower", **TOWER}, "head": {"dim": 8}},
                       tasks=[all_tasks[t] for t in tasks], **kw)


@pytest.fixture(scope="session")
def market_data(marketplace_dir):
    return marketplace_source(marketplace_dir)
