"""The low-rank tensor functions, on their own."""
import pytest
import torch
import torch.nn.functional as F

from stagevar.lowrank import area_resize_tokens, project, projection_matrix, representative_indices, restore_tokens


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
