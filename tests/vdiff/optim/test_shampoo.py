"""Shampoo with grafting: blocking, per-block graft norms, the first-order phase, convergence, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vdiff.optim.shampoo import Shampoo, block_slices, inverse_root, matrix_shape, param_blocks


def shampoo(params: list[torch.Tensor], **kw: object) -> Shampoo:
    base = {"lr": 0.1, "start_preconditioning_step": 1, "precondition_frequency": 1, "epsilon": 1e-12}
    return Shampoo(params, **{**base, **kw})  # type: ignore[arg-type]


def step_with(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def test_blocks_tile_the_matrix_within_max_dim() -> None:
    blocks = block_slices(10, 7, 4)
    covered = torch.zeros(10, 7, dtype=torch.int64)
    for rs, cs in blocks:
        assert rs.stop - rs.start <= 4 and cs.stop - cs.start <= 4
        covered[rs, cs] += 1
    assert torch.equal(covered, torch.ones_like(covered)) and len(blocks) == 3 * 2
    assert param_blocks((5,), 4) == [] and param_blocks((), 4) == []
    assert param_blocks((6, 2, 2, 2), 4) == block_slices(6, 8, 4)  # conv weight -> (6, 8)

    conv = torch.nn.Conv3d(3, 9, (1, 2, 2))  # weight (9, 3, 1, 2, 2) -> matrix (9, 12)
    opt = shampoo(list(conv.parameters()), max_preconditioner_dim=4)
    conv(torch.randn(1, 3, 1, 4, 4)).sum().backward()
    opt.step()
    state = opt.state[conv.weight]
    factors = [v for k, v in state.items() if k[0] in "LR"]
    assert len(factors) == 4 * 3 * 3  # 3 row blocks x 3 column blocks, 4 matrices each
    assert all(f.shape[0] == f.shape[1] <= 4 for f in factors)
    assert not any(k[0] in "LR" for k in opt.state[conv.bias])  # 1-D: diagonal (graft) only


def test_inverse_root_closed_form() -> None:
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    lam = torch.tensor([16.0, 1.0, 0.0625, 81.0, 0.0], dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    # NOTE: eps 1e-6 dominates the ~1e-15 round-off that the zero eigenvalue picks up
    got = inverse_root(a, root=4, eps=1e-6)
    want = q @ torch.diag((lam + 1e-6).pow(-0.25)) @ q.T
    torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
    got = inverse_root(a, root=4, eps=1.0)  # eps on the eigenvalues: (λ + 1)^(-1/4)
    torch.testing.assert_close(got, q @ torch.diag((lam + 1).pow(-0.25)) @ q.T, rtol=1e-9, atol=1e-12)


def test_first_step_is_polar_factor_per_block_at_the_adamw_step_norm() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 10, dtype=torch.float64))
    g = torch.randn(6, 10, dtype=torch.float64)
    before = w.detach().clone()
    opt = shampoo([w], lr=0.1, eps=1e-8, max_preconditioner_dim=4)
    step_with(opt, [w], [g])
    delta = (before - w.detach()) / 0.1
    # step 1: m̂ = g and v̂ = g², so the AdamW step is g / (|g| + eps) elementwise
    adamw_step = g / (g.abs() + 1e-8)
    for rs, cs in block_slices(6, 10, 4):
        d, gb = delta[rs, cs], g[rs, cs]
        assert d.norm().item() == pytest.approx(adamw_step[rs, cs].norm().item(), rel=1e-12)
        # L^(-1/4) G R^(-1/4) with L = G Gᵀ, R = Gᵀ G is U Vᵀ (G = U S Vᵀ): equal singular values
        u, _, vh = torch.linalg.svd(gb, full_matrices=False)
        polar = u @ vh
        torch.testing.assert_close(d, polar * (d.norm() / polar.norm()), rtol=0, atol=1e-6)


def test_graft_norm_per_block_equals_torch_adamw_step_norm_every_step() -> None:
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(7, 9, dtype=torch.float64))
    ref = torch.nn.Parameter(w.detach().clone())
    opt = shampoo([w], lr=0.01, betas=(0.9, 0.99), max_preconditioner_dim=5, start_preconditioning_step=3)
    adamw = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.99), weight_decay=0.0)
    for step in range(1, 7):
        g = torch.randn(7, 9, dtype=torch.float64)
        w0, r0 = w.detach().clone(), ref.detach().clone()
        step_with(opt, [w], [g])
        step_with(adamw, [ref], [g])
        ours, theirs = w0 - w.detach(), r0 - ref.detach()
        for rs, cs in block_slices(7, 9, 5):
            assert ours[rs, cs].norm().item() == pytest.approx(theirs[rs, cs].norm().item(), rel=1e-9)
        if step < 3:  # before start_preconditioning_step: the AdamW step itself
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-15)
        else:  # after: the same norms but Shampoo's direction
            assert (ours - theirs).norm() > 0.1 * theirs.norm()


@pytest.mark.parametrize("graft", ["adamw", "adagrad"])
def test_before_start_it_is_the_grafted_optimizer(graft: str) -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 3))
    ref = copy.deepcopy(model)
    betas = (0.9, 0.95) if graft == "adamw" else (0.0, 0.95)
    opt = Shampoo(
        model.parameters(),
        lr=0.05,
        betas=betas,
        weight_decay=0.1,
        graft=graft,
        start_preconditioning_step=100,
    )
    if graft == "adamw":
        torch_opt: torch.optim.Optimizer = torch.optim.AdamW(
            ref.parameters(), lr=0.05, betas=betas, weight_decay=0.1
        )
    else:
        # NOTE: torch Adagrad's weight_decay is an L2 term in the gradient; ours is decoupled, so compare at 0
        opt.param_groups[0]["weight_decay"] = 0.0
        torch_opt = torch.optim.Adagrad(ref.parameters(), lr=0.05, eps=1e-8)
    x = torch.randn(16, 8)
    for _ in range(5):
        for m, o in ((model, opt), (ref, torch_opt)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_converges_faster_than_adamw_on_an_ill_conditioned_quadratic() -> None:
    """f(W) = ½ tr(Eᵀ A E B), E = W − W*, with rotated A, B of condition number 100 (Kronecker Hessian)."""
    gen = torch.Generator().manual_seed(0)

    def spd(n: int) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
        return q @ torch.diag(torch.logspace(0, 2, n, dtype=torch.float64)) @ q.T

    a, b = spd(16), spd(24)
    target = torch.randn(16, 24, dtype=torch.float64, generator=gen)

    def loss(w: torch.Tensor) -> torch.Tensor:
        e = w - target
        return 0.5 * torch.trace(e.T @ a @ e @ b)

    def final_loss(make: type[torch.optim.Optimizer], lr: float, **kw: object) -> float:
        w = torch.zeros(16, 24, dtype=torch.float64, requires_grad=True)
        opt = make([w], lr=lr, **kw)
        for _ in range(100):
            opt.zero_grad()
            loss(w).backward()
            opt.step()
        return loss(w).item()

    lrs = (0.01, 0.03, 0.1, 0.3, 1.0)  # each optimizer at its best lr of the same grid
    adamw = min(final_loss(torch.optim.AdamW, lr, weight_decay=0.0) for lr in lrs)
    ours = min(
        final_loss(
            Shampoo, lr, max_preconditioner_dim=8, precondition_frequency=5, start_preconditioning_step=5
        )
        for lr in lrs
    )
    # NOTE: measured: AdamW 43.6, blocked Shampoo 16.8 from 7.8e4 (deterministic, float64 on CPU)
    assert ours <= adamw, (ours, adamw)


def test_state_dict_round_trip_gives_bit_identical_steps() -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Linear(10, 4))
    kw = {
        "lr": 0.01,
        "max_preconditioner_dim": 6,
        "precondition_frequency": 3,
        "start_preconditioning_step": 2,
    }
    opt = Shampoo(model.parameters(), weight_decay=0.01, **kw)
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(7)]
    for g in grads[:3]:
        step_with(opt, list(model.parameters()), g)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for g in grads[3:]:  # crosses a refresh of the inverse roots (steps 5 and 8)
        step_with(opt, list(model.parameters()), g)

    resumed = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Linear(10, 4))
    resumed.load_state_dict(saved_model)
    opt2 = Shampoo(resumed.parameters(), weight_decay=0.01, **kw)
    opt2.load_state_dict(saved_opt)
    for g in grads[3:]:
        step_with(opt2, list(resumed.parameters()), g)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert opt.state[p].keys() == opt2.state[q].keys()
        assert all(torch.equal(opt.state[p][k], opt2.state[q][k]) for k in opt.state[p])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_preconditioner_dim": 0}, "max_preconditioner_dim=0"),
        ({"precondition_frequency": 0}, "precondition_frequency=0"),
        ({"start_preconditioning_step": 0}, "start_preconditioning_step=0"),
        ({"graft": "sgd"}, "graft='sgd'"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"factor_beta": 1.5}, "factor_beta=1.5"),
        ({"betas": (0.9, 1.0)}, "betas"),
    ],
)
def test_bad_settings_name_the_key(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Shampoo([torch.nn.Parameter(torch.zeros(2, 2))], **kw)


def test_zero_gradient_step_at_lr_zero_leaves_weights_alone() -> None:
    # torch.distributed.checkpoint initialises optimizer state with exactly this step before loading
    w = torch.nn.Parameter(torch.randn(3, 4))
    before = w.detach().clone()
    opt = shampoo([w], lr=0.0, weight_decay=0.1)
    step_with(opt, [w], [torch.zeros(3, 4)])
    assert torch.equal(w.detach(), before) and all(torch.isfinite(v).all() for v in opt.state[w].values())
    assert math.isclose(opt.state[w]["step"].item(), 1.0)


@pytest.mark.parametrize("factor_beta", [1.0, 0.5])
def test_factor_sums_and_root_refresh_schedule(factor_beta: float) -> None:
    torch.manual_seed(4)
    w = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    opt = shampoo([w], factor_beta=factor_beta, start_preconditioning_step=2, precondition_frequency=3)
    grads = [torch.randn(3, 5, dtype=torch.float64) for _ in range(6)]
    want_left = torch.zeros(3, 3, dtype=torch.float64)
    roots = []
    for g in grads:
        step_with(opt, [w], [g])
        new = 1.0 if factor_beta == 1.0 else 1 - factor_beta
        want_left = factor_beta * want_left + new * g @ g.T  # L ← β·L + (1 − β)·G·Gᵀ, or the sum at β = 1
        torch.testing.assert_close(opt.state[w]["L_0"], want_left, rtol=1e-12, atol=0)
        roots.append(opt.state[w]["L_root_0"].clone())
    # inverse roots recomputed at steps 2 and 5 (start 2, every 3), kept in between
    assert not roots[0].any() and torch.equal(roots[1], roots[2]) and torch.equal(roots[2], roots[3])
    assert not torch.equal(roots[3], roots[4]) and torch.equal(roots[4], roots[5])
    torch.testing.assert_close(roots[4], inverse_root(left_after(grads, 5, factor_beta), root=4, eps=1e-12))


def left_after(grads: list[torch.Tensor], step: int, factor_beta: float) -> torch.Tensor:
    """L after ``step`` steps, from the closed form Σ_s β^(step−s)·(1 − β)·G_s·G_sᵀ (β = 1: the plain sum)."""
    new = 1.0 if factor_beta == 1.0 else 1 - factor_beta
    return sum(factor_beta ** (step - s) * new * g @ g.T for s, g in enumerate(grads[:step], start=1))


def test_size_one_dims_are_dropped_and_other_shapes_keep_the_matrix_view() -> None:
    # the previous rule, (dim 0, product of the rest), for shapes without a size-1 dim
    for shape in [(6, 10), (9, 3, 2, 2), (5, 7, 3), (1536, 8960)]:
        assert matrix_shape(shape) == (shape[0], math.prod(shape[1:]))
        assert param_blocks(shape, 1024) == block_slices(shape[0], math.prod(shape[1:]), 1024)
    # size-1 dims dropped (Meta's Distributed Shampoo squeezes them before merging dims)
    assert matrix_shape((1, 6, 1536)) == (6, 1536)
    assert matrix_shape((1536, 16, 1, 2, 2)) == (1536, 64)  # unchanged: the product is the same
    assert matrix_shape((1, 1536)) is None and matrix_shape((1, 1, 1)) is None  # diagonal only
    # a (1, 6, 1536) modulation table: (6, 1024) and (6, 512) blocks, not nine 1024 x 1024 R factors
    assert param_blocks((1, 6, 1536), 1024) == [
        (slice(0, 6), slice(0, 1024)),
        (slice(0, 6), slice(1024, 1536)),
    ]


def test_modulation_table_state_is_its_6_x_1536_factors() -> None:
    table = torch.nn.Parameter(torch.zeros(1, 6, 1536))  # a Wan2.1-1.3B block's modulation
    opt = shampoo([table])
    step_with(opt, [table], [torch.randn(1, 6, 1536)])
    state = opt.state[table]
    shapes = {k: tuple(v.shape) for k, v in state.items() if k[0] in "LR"}
    assert shapes == {
        "L_0": (6, 6), "L_root_0": (6, 6), "R_0": (1024, 1024), "R_root_0": (1024, 1024),
        "L_1": (6, 6), "L_root_1": (6, 6), "R_1": (512, 512), "R_root_1": (512, 512),
    }  # fmt: skip
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    # step + exp_avg + graft_sq + two copies (factor, root) of 6² + 1024² + 6² + 512², fp32
    assert nbytes == 4 + 2 * 9216 * 4 + 2 * (2 * 36 + 1024**2 + 512**2) * 4
    # 30 such tables (Wan2.1-1.3B): ~0.31 GB; the (1, 9216) view kept nine 1x1 L and 1024² R
    # factors (and roots) each: 30 * 9 * 2 * (1 + 1024²) * 4 bytes ~ 2.26 GB
    assert 30 * nbytes < 0.32e9 < 2.2e9 < 30 * 9 * 2 * (1 + 1024**2) * 4


@pytest.mark.parametrize(
    ("shape", "squeezed"), [((1, 6, 20), (6, 20)), ((1, 20), (20,)), ((6, 1, 20), (6, 20))]
)
def test_size_one_dims_change_nothing_in_the_update(shape: tuple, squeezed: tuple) -> None:
    torch.manual_seed(3)
    init = torch.randn(squeezed, dtype=torch.float64)
    a = torch.nn.Parameter(init.reshape(shape).clone())
    b = torch.nn.Parameter(init.clone())
    opt_a, opt_b = shampoo([a], max_preconditioner_dim=8), shampoo([b], max_preconditioner_dim=8)
    for _ in range(4):
        g = torch.randn(squeezed, dtype=torch.float64)
        step_with(opt_a, [a], [g.reshape(shape)])
        step_with(opt_b, [b], [g])
    torch.testing.assert_close(a.detach().reshape(squeezed), b.detach(), rtol=1e-12, atol=1e-12)
