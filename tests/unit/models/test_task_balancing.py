"""PCGrad: conflicting task gradients are projected off each other; agreeing ones are summed as they are;
the shared parameters get the surgery, the task-specific ones their own task's gradient."""

import pytest

torch = pytest.importorskip("torch")

from nearline.models.task_balancing import backward, pcgrad_project  # noqa: E402


def test_conflicting_gradients_are_projected_and_agreeing_ones_summed():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # dot -1: they conflict
    out = pcgrad_project([a, b], gen)
    # a off b: a - (-1/2) b = (0.5, 0.5); b off a: b - (-1/1) a = (0, 1); summed: (0.5, 1.5)
    assert torch.allclose(out, torch.tensor([0.5, 1.5]))
    c, d = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # agree: plain sum
    assert torch.allclose(pcgrad_project([c, d], gen), c + d)
    # after surgery neither projected gradient points against the other task's
    pa, pb = a - (a @ b) / (b @ b) * b, b - (b @ a) / (a @ a) * a
    assert pa @ b >= -1e-6 and pb @ a >= -1e-6


def test_backward_sets_surgery_on_shared_and_plain_gradients_on_task_parameters():
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0]))       # shared
    h1, h2 = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.tensor(2.0))  # task heads
    # loss1 gradient on w: (1, 0) * h1; loss2: (-1, 1) * h2 / 2 -> conflicting
    loss1 = h1 * w[0]
    loss2 = h2 * (-w[0] + w[1]) / 2
    backward("pcgrad", [loss1, loss2], [w], gen)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert torch.allclose(w.grad, pcgrad_project([g1, g2], torch.Generator().manual_seed(0)))
    assert not torch.allclose(w.grad, g1 + g2)
    assert h1.grad.item() == pytest.approx(0.0) and h2.grad.item() == pytest.approx(0.0)  # w == 0: d/dh = 0
    w.grad = h1.grad = h2.grad = None
    backward("sum", [h1 * w[0], h2 * (-w[0] + w[1]) / 2], [w], gen)
    assert torch.allclose(w.grad, g1 + g2)
    with pytest.raises(ValueError, match="gradient must be one of"):
        backward("gradnorm", [h1 * w[0], h2 * w[1]], [w], gen)


def test_share_embeddings_ties_the_tables_of_task_specific_towers(market_data):
    """Task-specific towers (different names) with share_embeddings: one embedding table per feature and side,
    trained by both tasks in either mode; the dense layers stay each task's own."""
    from nearline.models.multitask import Trainer

    from tests.unit.models.conftest import TOWER, tiny_config

    tables, frames = market_data
    for mode in ("joint", "iterative"):
        cfg = tiny_config(mode, tasks=("view", "apply"), epochs=1, share_embeddings=True)
        cfg.tasks[1].architecture = {"member_tower": {"name": "apply_member_tower", **TOWER},
                                     "job_tower": {"name": "apply_job_tower", **TOWER}}
        tr = Trainer(cfg, tables, frames, progress=False)
        view_m, apply_m = tr.model.tower("member", "view"), tr.model.tower("member", "apply")
        assert view_m is not apply_m and view_m.layers[0] is not apply_m.layers[0]
        assert all(apply_m.embeddings[f] is e for f, e in view_m.embeddings.items())
        assert tr.model.sharing_report()["apply_member_tower"]["embeddings_shared_with"] == ["member_tower"]
        before = view_m.embeddings["title"].emb.weight.detach().clone()
        dense_before = apply_m.layers[0][0].weight.detach().clone()
        tr.fit()
        assert not torch.equal(before, view_m.embeddings["title"].emb.weight)
        assert not torch.equal(dense_before, apply_m.layers[0][0].weight)
        n_params = sum(p.numel() for g in tr._optimizers()[next(iter(tr._optimizers()))].param_groups for p in g["params"])
        if mode == "joint":  # every parameter in exactly one group (torch refuses duplicates)
            assert n_params == sum(p.numel() for p in tr.model.parameters()) - len(tr.model.log_vars)
