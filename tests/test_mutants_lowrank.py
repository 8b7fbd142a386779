"""stagevar.lowrank: behaviours the mutation run (TESTING.md) found untested."""
import pytest
import torch

from stagevar.lowrank import farthest_from_mean_indices, project, projection_matrix, representative_indices

CPU = torch.device("cpu")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ FastVAR's selection (selection="mean_distance")

def test_mean_distance_selection_keeps_the_tokens_farthest_from_the_mean():
    g = gen(3)
    x = torch.randn(3, 40, 6, generator=g)
    for r in (1, 7, 40):
        idx = farthest_from_mean_indices(x, r)
        assert idx.shape == (3, r) and idx.dtype == torch.int64
        d = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)
        for b in range(3):
            chosen = set(idx[b].tolist())
            assert len(chosen) == r
            want = set(torch.argsort(d[b], descending=True)[:r].tolist())
            assert chosen == want


def test_mean_distance_selection_finds_planted_outliers_per_row():
    x = torch.zeros(2, 30, 4)
    x[0, [3, 17]] = 5.0            # row 0: two outliers
    x[1, [0, 29]] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    for b, want in ((0, {3, 17}), (1, {0, 29})):
        assert set(farthest_from_mean_indices(x, 2)[b].tolist()) == want
    # a constant offset does not change the choice: it is the distance to the row's mean, not the norm
    assert set(farthest_from_mean_indices(x + 100.0, 2)[0].tolist()) == {3, 17}


def test_mean_distance_selection_is_computed_in_fp32():
    x = torch.randn(1, 64, 8, generator=gen(1)).to(torch.bfloat16)
    idx = farthest_from_mean_indices(x, 5)
    xf = x.float()
    d = (xf - xf.mean(1, keepdim=True)).pow(2).sum(-1)
    assert set(idx[0].tolist()) == set(d[0].topk(5).indices.tolist())


@pytest.mark.parametrize("r", [0, 11, -1])
def test_mean_distance_selection_refuses_a_rank_outside_1_to_M(r):
    with pytest.raises(ValueError, match=rf"rank r={r} must be in \[1, M=10\]"):
        farthest_from_mean_indices(torch.randn(1, 10, 3), r)


# ------------------------------------------------------------------ the norm-proportional sampling

def test_zero_tokens_come_last_in_every_row_whatever_the_other_rows_scale():
    """Each row's floor for exact zeros is relative to that row's largest token, not the batch's."""
    x = torch.zeros(2, 12, 3)
    x[0, :4] = 1e-4                 # row 0: tiny but nonzero tokens at 0..3
    x[1] = 1e4                      # row 1: huge everywhere (also at row 0's zero positions)
    g = gen(0)
    for _ in range(50):
        idx = representative_indices(x, 4, g)
        assert set(idx[0].tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------ projections

def test_projection_kinds_are_distinct_and_unknown_kind_names_the_choices():
    Qg = projection_matrix(64, 8, "gaussian", gen(5), CPU)
    Qo = projection_matrix(64, 8, "orthogonal", gen(5), CPU)
    assert torch.allclose(Qo.t() @ Qo, torch.eye(8), atol=1e-5)
    assert not torch.allclose(Qg.t() @ Qg, torch.eye(8), atol=1e-2)
    with pytest.raises(ValueError, match=r"unknown projection kind 'sample'.*'gaussian' or 'orthogonal'"):
        projection_matrix(64, 8, "sample", gen(5), CPU)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_projection_matrix_returns_the_requested_dtype(dtype):
    Q = projection_matrix(32, 4, "gaussian", gen(0), CPU, dtype=dtype)
    assert Q.dtype == dtype
    assert torch.equal(Q, projection_matrix(32, 4, "gaussian", gen(0), CPU).to(dtype))


def test_projection_draw_does_not_depend_on_the_default_dtype():
    """Presets are reproducible from the seed: a caller's torch.set_default_dtype must not change Q."""
    ref = projection_matrix(48, 6, "orthogonal", gen(2), CPU)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        again = projection_matrix(48, 6, "orthogonal", gen(2), CPU)
        x = torch.randn(2, 48, 5, dtype=torch.float32, generator=gen(9))
        out = project(x, 6, "gaussian", torch.zeros(2, 6, dtype=torch.long), gen(4))
    finally:
        torch.set_default_dtype(old)
    assert again.dtype == torch.float32 and torch.equal(ref, again)
    assert torch.equal(out, project(x, 6, "gaussian", torch.zeros(2, 6, dtype=torch.long), gen(4)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projection_is_drawn_on_the_tokens_device():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    Q = projection_matrix(32, 4, "orthogonal", g, dev)
    assert Q.device.type == "cuda"
    x = torch.randn(2, 32, 8, device=dev)
    out = project(x, 4, "gaussian", torch.zeros(2, 4, dtype=torch.long, device=dev), torch.Generator(device=dev).manual_seed(1))
    assert out.device.type == "cuda" and out.shape == (2, 4, 8)
