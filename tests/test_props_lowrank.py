"""Property tests of the pure low-rank functions: token restoration writes exactly the representative
positions, area resizing is F.interpolate(mode="area") with its averaging properties, and the
representative positions are distinct and in range."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stagevar.lowrank import area_resize_tokens, representative_indices, restore_tokens

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
