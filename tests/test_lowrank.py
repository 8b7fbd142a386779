"""stagevar.lowrank: the reducers' tensor functions (selection, projection, restoration) and their properties."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stagevar.lowrank import (
    area_resize_tokens,
    farthest_from_mean_indices,
    project,
    projection_matrix,
    representative_indices,
    restore_tokens,
)


# ------------------------------------------------------------------------------------------
# The low-rank tensor functions, on their own.
def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_indices_are_distinct_and_follow_norms():
    x = torch.zeros(2, 50, 8)
    x[:, :10] = torch.randn(2, 10, 8)  # only 10 tokens carry energy
    idx = representative_indices(x, 10, gen())
    assert idx.shape == (2, 10)
    for row in idx:
        assert len(set(row.tolist())) == 10
        assert set(row.tolist()) == set(range(10))
    # sampling frequency grows with the squared norm
    y = torch.ones(1, 4, 3)
    y[0, 0] *= 4.0
    counts = torch.zeros(4)
    g = gen(1)
    for _ in range(400):
        counts[representative_indices(y, 1, g)[0, 0]] += 1
    assert counts[0] > 300  # p = 16/19 ~ 0.84


def test_indices_handle_all_zero_tokens_and_bad_rank():
    idx = representative_indices(torch.zeros(1, 5, 3), 5, gen())
    assert sorted(idx[0].tolist()) == list(range(5))
    with pytest.raises(ValueError, match="rank r=6"):
        representative_indices(torch.zeros(1, 5, 3), 6, gen())


def test_projections():
    Q = projection_matrix(400, 50, "gaussian", gen(), torch.device("cpu"))
    assert Q.shape == (400, 50)
    assert abs(Q.var().item() - 1 / 50) < 2e-3
    O = projection_matrix(40, 10, "orthogonal", gen(), torch.device("cpu"))
    torch.testing.assert_close(O.t() @ O, torch.eye(10), atol=1e-5, rtol=0)
    x = torch.randn(3, 40, 6)
    idx = torch.stack([torch.randperm(40)[:10] for _ in range(3)])
    s = project(x, 10, "sample", idx, gen())
    assert torch.equal(s, torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, 6)))
    g1 = project(x, 10, "gaussian", idx, gen(5))
    g2 = project(x, 10, "gaussian", idx, gen(5))
    assert g1.shape == (3, 10, 6) and torch.equal(g1, g2)
    torch.testing.assert_close(g1, torch.einsum("mr,bmc->brc", projection_matrix(40, 10, "gaussian", gen(5), x.device), x))
    assert project(x.bfloat16(), 10, "gaussian", idx, gen()).dtype == torch.bfloat16


def test_restore_scatters_into_area_upsampled_previous_output():
    prev = torch.randn(2, 4, 3, 5)  # non-square previous map (B, C, h, w)
    prev_tokens = prev.reshape(2, 4, -1).transpose(1, 2)
    out = torch.randn(2, 6, 4)
    idx = torch.stack([torch.randperm(28)[:6] for _ in range(2)])
    res = restore_tokens(prev_tokens, (3, 5), out, idx, (4, 7))
    base = F.interpolate(prev, size=(4, 7), mode="area").reshape(2, 4, -1).transpose(1, 2)
    assert res.shape == (2, 28, 4)
    mask = torch.ones(2, 28, dtype=torch.bool).scatter_(1, idx, False)
    torch.testing.assert_close(res[mask], base[mask])
    torch.testing.assert_close(torch.gather(res, 1, idx.unsqueeze(-1).expand(-1, -1, 4)), out)


@pytest.mark.parametrize("src, dst", [((13, 13), (16, 16)), ((3, 5), (4, 7)), ((8, 6), (4, 3)), ((5, 5), (5, 5))])
def test_area_resize_tokens_matches_interpolate(src, dst):
    x = torch.randn(2, 3, *src)
    want = F.interpolate(x, size=dst, mode="area").reshape(2, 3, -1).transpose(1, 2)
    got = area_resize_tokens(x.reshape(2, 3, -1).transpose(1, 2), src, dst)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="do not form a 2x2 map"):
        area_resize_tokens(torch.zeros(1, 6, 1), (2, 2), (3, 3))



# ------------------------------------------------------------------------------------------
# stagevar.lowrank: behaviours the mutation run (TESTING.md) found untested.
CPU = torch.device("cpu")


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



# ------------------------------------------------------------------------------------------
# Property tests of the pure low-rank functions: token restoration writes exactly the representative
SMALL = settings(max_examples=50, deadline=None)
side = st.integers(1, 9)


def tokens_of(map_BCHW: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> row-major tokens (B, h*w, C)."""
    B, C = map_BCHW.shape[:2]
    return map_BCHW.reshape(B, C, -1).transpose(1, 2)


def random_map(seed: int, B: int, C: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@st.composite
def restoration(draw):
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    prev_hw, hw = (draw(side), draw(side)), (draw(side), draw(side))
    M = hw[0] * hw[1]
    r = draw(st.integers(1, M))
    idx = torch.tensor([draw(st.permutations(range(M)))[:r] for _ in range(B)], dtype=torch.int64)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    seed = draw(st.integers(0, 2**31))
    prev = tokens_of(random_map(seed, B, C, *prev_hw))
    out = torch.randn(B, r, C, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return prev, prev_hw, out, idx, hw


@SMALL
@given(restoration())
def test_restore_writes_exactly_the_representative_positions(case):
    prev, prev_hw, out, idx, hw = case
    B, r, C = out.shape
    res = restore_tokens(prev, prev_hw, out, idx, hw)
    assert res.shape == (B, hw[0] * hw[1], C) and res.dtype == out.dtype
    base = area_resize_tokens(prev, prev_hw, hw).to(out.dtype)
    listed = torch.zeros(B, hw[0] * hw[1], dtype=torch.bool).scatter_(1, idx, True)
    assert torch.equal(res[~listed], base[~listed])  # every other position: the resized previous output
    for b in range(B):
        for j in range(r):  # every listed position: its row of the reduced output
            assert torch.equal(res[b, idx[b, j]], out[b, j])
    assert prev.shape[1] == prev_hw[0] * prev_hw[1]  # inputs untouched in shape (no in-place views)


@SMALL
@given(st.integers(1, 3), st.integers(1, 5), side, side, side, side, st.integers(0, 2**31))
def test_area_resize_equals_interpolate_area(B, C, h, w, H, W, seed):
    x = random_map(seed, B, C, h, w)
    want = tokens_of(F.interpolate(x, size=(H, W), mode="area"))
    got = area_resize_tokens(tokens_of(x), (h, w), (H, W))
    assert got.shape == (B, H * W, C) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@SMALL
@given(side, side, side, side, st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([torch.float32, torch.float16]))
def test_area_resize_keeps_a_constant_map_constant(h, w, H, W, value, dtype):
    x = torch.full((2, h * w, 3), value, dtype=dtype)
    got = area_resize_tokens(x, (h, w), (H, W))
    torch.testing.assert_close(got, torch.full_like(got, x[0, 0, 0].item()), atol=1e-4, rtol=1e-5)


def evenly(base):
    """A (src, dst) side pair where one divides the other: integer down- or up-sampling, or equal."""
    return st.tuples(st.integers(1, 4), st.integers(1, 3), st.booleans()).map(
        lambda t: (t[0] * t[1], t[0]) if t[2] else (t[0], t[0] * t[1]))


@SMALL
@given(evenly(0), evenly(1), st.integers(0, 2**31))
def test_area_resize_preserves_the_mean_when_sizes_divide(hs, ws, seed):
    (h, H), (w, W) = hs, ws
    x = random_map(seed, 2, 3, h, w)
    got = area_resize_tokens(tokens_of(x), (h, w), (H, W))
    torch.testing.assert_close(got.mean(1), tokens_of(x).mean(1), atol=1e-5, rtol=1e-5)


def test_area_resize_does_not_preserve_the_mean_otherwise():
    # 10 -> 13: pooling windows overlap unevenly (13 windows over 10 cells, some of 2 cells, some of 1),
    # so a cell's weight in the output mean depends on its position. A corner spike is counted in
    # 1.5 output cells per axis: the mean goes from 100/100 = 1 to 100 * 1.5 * 1.5 / 169.
    x = torch.zeros(1, 100, 1)
    x[0, 0, 0] = 100.0
    got = area_resize_tokens(x, (10, 10), (13, 13))
    assert x.mean().item() == 1.0
    assert abs(got.mean().item() - 225 / 169) < 1e-5
    assert abs(got.mean().item() - x.mean().item()) > 0.3


@st.composite
def token_rows(draw, bounded: bool = False):
    """(x, r, seed): tokens of one magnitude ``scale`` (from 1e-15 to 1e4), some exactly zero.
    ``bounded``: every entry's magnitude is within [0.5, 1.5] * scale, so nonzero squared norms
    differ by at most a factor 9 * C."""
    B, M, C = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** draw(st.integers(-15, 4))
    if bounded:
        x = (torch.rand(B, M, C, generator=g) + 0.5) * torch.randn(B, M, C, generator=g).sign() * scale
    else:
        x = torch.randn(B, M, C, generator=g) * scale
    x = x * (torch.rand(B, M, 1, generator=g) >= draw(st.floats(0, 1)))  # some, or all, tokens exactly zero
    return x, draw(st.integers(1, M)), seed


@SMALL
@given(token_rows())
def test_representative_indices_are_distinct_and_in_range(case):
    x, r, seed = case
    idx = representative_indices(x, r, torch.Generator().manual_seed(seed))
    assert idx.shape == (x.shape[0], r) and idx.dtype == torch.int64
    assert bool(((idx >= 0) & (idx < x.shape[1])).all())
    for row in idx.tolist():
        assert len(set(row)) == r
    assert torch.equal(idx, representative_indices(x, r, torch.Generator().manual_seed(seed)))  # seeded: repeatable


@SMALL
@given(token_rows(bounded=True))
def test_zero_tokens_are_chosen_only_after_every_nonzero_one(case):
    x, r, seed = case
    idx = representative_indices(x, r, torch.Generator().manual_seed(seed))
    nonzero = x.pow(2).sum(-1) > 0
    for b, row in enumerate(idx.tolist()):
        n_nonzero = int(nonzero[b].sum())
        chosen = [bool(nonzero[b, i]) for i in row]
        # a zero token carries a weight floor of 1e-12 * the largest weight; nonzero weights here are at
        # least 1/36 of the largest, so a zero token is drawn first with probability below 40 * 36e-12
        assert sum(chosen) == min(r, n_nonzero)


# ------------------------------------------------------------------------------------------
# The reducers: one registered object per technique, each a composition of the functions above.
def test_each_registered_reducer_is_its_technique_with_its_flags():
    from stagevar.lowrank import (REDUCERS, FarthestFromMean, GaussianProjection, OrthogonalProjection,
                                  Representatives, reducer)
    kinds = {"gaussian": GaussianProjection, "orthogonal": OrthogonalProjection, "sample": Representatives,
             "fastvar": FarthestFromMean}
    assert sorted(REDUCERS) == sorted(kinds)
    for name, cls in kinds.items():
        assert type(reducer(name)) is cls and reducer(name) is REDUCERS[name] and cls.name == name
    assert {n: REDUCERS[n].exact_at_full_rank for n in kinds} == {"gaussian": False, "orthogonal": False,
                                                                  "sample": True, "fastvar": True}
    assert {n: REDUCERS[n].graphable for n in kinds} == {"gaussian": True, "orthogonal": False, "sample": True,
                                                         "fastvar": True}
    with pytest.raises(ValueError, match=r"unknown reducer 'svd'; registered: \['fastvar', 'gaussian', 'orthogonal', 'sample'\]"):
        reducer("svd")


def test_reducers_select_reduce_and_expand_with_the_tensor_functions():
    from stagevar.lowrank import reducer
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5) + torch.linspace(0, 3, 5)  # an offset shared by every token
    prev, prev_hw, hw = torch.randn(2, 6, 5), (2, 3), (3, 4)
    for name in ("gaussian", "orthogonal", "sample"):
        idx = reducer(name).select(x, 4, gen(3))
        assert torch.equal(idx, representative_indices(x, 4, gen(3)))
        assert torch.equal(reducer(name).reduce(x, idx, gen(5)), project(x, 4, name, idx, gen(5)))
    assert torch.equal(reducer("sample").reduce(x, idx, None), x.gather(1, idx.unsqueeze(-1).expand(-1, -1, 5)))
    assert not torch.equal(reducer("gaussian").reduce(x, idx, gen(5)), reducer("orthogonal").reduce(x, idx, gen(5)))
    fidx = reducer("fastvar").select(x, 4, None)
    assert torch.equal(fidx, farthest_from_mean_indices(x, 4))
    assert torch.equal(reducer("fastvar").reduce(x, fidx, None), x.gather(1, fidx.unsqueeze(-1).expand(-1, -1, 5)))
    out = torch.randn(2, 4, 5)
    for name in ("gaussian", "orthogonal", "sample", "fastvar"):
        assert torch.equal(reducer(name).expand(out, fidx, prev, prev_hw, hw), restore_tokens(prev, prev_hw, out, fidx, hw))


def test_register_reducer_adds_a_named_subclass_and_refuses_anything_else():
    from stagevar.lowrank import REDUCERS, Reducer, Representatives, reducer, register_reducer

    class Firsts(Representatives):
        name = "firsts"

        def select(self, x_BMC, r, generator):
            return torch.arange(r).expand(x_BMC.shape[0], r)

    try:
        assert register_reducer(Firsts) is Firsts  # usable as a decorator
        assert type(reducer("firsts")) is Firsts
        assert reducer("firsts").select(torch.zeros(2, 9, 3), 3, None).tolist() == [[0, 1, 2]] * 2
    finally:
        REDUCERS.pop("firsts", None)

    class Nameless(Reducer):
        pass

    for bad in (Nameless, Firsts(), int, "gaussian", None):
        with pytest.raises(TypeError, match=r"register_reducer expects a Reducer subclass with a name, got "):
            register_reducer(bad)
    assert "firsts" not in REDUCERS and "" not in REDUCERS
