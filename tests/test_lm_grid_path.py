"""The LM models' grid render path (``LMDecoder.query_grid`` / ``render_band``) against their general
per-query path (``query_fast``) and the training path (explicit modulations), for every modulation kind,
batches of two, integer and fractional scales and the reduced-precision modes; the latent MLP's first layer
as a 3x3 convolution (``MLP.forward_unfold3x3``) against the explicit unfold; the row bands."""
import pytest
import torch

import models
from models.decoders.liif import unfold3x3
from models.decoders.lmliif import row_bands
from models.decoders.mlp import MLP
from utils.coords import make_coord

from .conftest import load_golden


def tiny_lmliif(mod_scale=True, mod_shift=True, cell_decode=True, mod_input=False, seed=0):
    torch.manual_seed(seed)
    model = models.make({'name': 'lmliif', 'args': {
        'encoder_spec': {'name': 'edsr-baseline', 'args': {'no_upsampling': True, 'n_resblocks': 1, 'n_feats': 16}},
        'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': 8, 'hidden_depth': 4,
                                                 'mod_scale': mod_scale, 'mod_shift': mod_shift}},
        'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': 1, 'hidden_list': [24]}},
        'cell_decode': cell_decode, 'mod_input': mod_input}})
    with torch.no_grad():           # modulations of a realistic size (random init makes them tiny)
        for p in model.hypernet.parameters():
            p.mul_(4)
    return model.eval()


def grid_vs_general(model, inp, size):
    """(query_grid on the target grid, query_fast on the same queries, explicit modulations), (B, H*W, 3)."""
    H, W = size
    B = inp.shape[0]
    ys, xs = make_coord((H,))[:, 0], make_coord((W,))[:, 0]
    cell = torch.tensor([2 / H, 2 / W]).expand(B, 2)
    coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2).expand(B, -1, 2)
    cells = cell.view(B, 1, 2).expand(B, H * W, 2)
    with torch.no_grad():
        state = model.prepare(inp, cells)
        grid = model.query_grid(state, ys, xs, cell).reshape(B, H * W, 3)
        fast = model.query_fast(state, coord, cells)
        explicit = model.query_explicit(state, coord, cells)
    return grid, fast, explicit


@pytest.mark.parametrize('mods', [(True, True), (True, False), (False, True)], ids=['scale+shift', 'scale', 'shift'])
@pytest.mark.parametrize('size', [(30, 25), (96, 80), (41, 67)], ids=['x2.5', 'x8', 'x3.4x6.7'])
def test_lmliif_grid_path_every_modulation_kind(mods, size):
    model = tiny_lmliif(*mods)
    inp = torch.rand(2, 3, 12, 10) * 2 - 1
    grid, fast, explicit = grid_vs_general(model, inp, size)
    assert (grid - fast).abs().max().item() <= 1e-5
    assert (grid - explicit).abs().max().item() <= 1e-5
    assert (grid[0] - grid[1]).abs().max().item() > 1e-3        # the two images are rendered from their own tables


def test_unmodulated_render_mlp_is_refused():
    with pytest.raises(ValueError, match='nothing modulates'):
        tiny_lmliif(False, False)


def test_lmliif_grid_path_without_cell_and_with_latent_input():
    for kwargs in ({'cell_decode': False}, {'mod_input': True}):
        model = tiny_lmliif(**kwargs)
        grid, fast, explicit = grid_vs_general(model, torch.rand(1, 3, 9, 11) * 2 - 1, (27, 44))
        assert (grid - explicit).abs().max().item() <= 1e-5, kwargs
        assert (grid - fast).abs().max().item() <= 1e-5, kwargs


@pytest.mark.parametrize('name', ['lmlte_edsr', 'lmciaosr_edsr'])
def test_golden_lm_models_grid_path_equals_general_path(name):
    model = models.make(load_golden(name)['model'], load_sd=True).eval()
    inp = load_golden(name)['inp'][:, :, :10, :9]
    grid, fast, explicit = grid_vs_general(model, inp, (35, 20))
    assert (grid - fast).abs().max().item() <= 1e-5
    assert (grid - explicit).abs().max().item() <= 1e-5


@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
def test_reduced_precision_grid_path_is_close(precision):
    model = tiny_lmliif()
    inp = torch.rand(1, 3, 12, 10) * 2 - 1
    ref = grid_vs_general(model, inp, (96, 80))[0]
    model.set_render_mode(precision)
    grid, fast, _ = grid_vs_general(model, inp, (96, 80))
    assert grid.dtype == torch.float32
    for out in (grid, fast):        # documented: errors of about 1e-2 in the normalised output
        assert (out - ref).abs().max().item() <= 5e-2 and (out - ref).abs().mean().item() <= 1e-2
    assert (grid - ref).abs().max().item() > 1e-4            # it did run in the reduced precision


@pytest.mark.parametrize('extra', [False, True])
@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('grad', [True, False])     # inference (no grad) takes the channels-last convolution
def test_mlp_first_layer_over_unfold_is_a_convolution(extra, batch, grad):
    torch.manual_seed(1)
    C = 5
    mlp = MLP(9 * C + (2 if extra else 0), 7, [11, 13])
    feat = torch.randn(batch, C, 6, 9)
    e = torch.randn(batch, 2) if extra else None
    z = unfold3x3(feat).permute(0, 2, 3, 1)
    if extra:
        z = torch.cat([z, e.view(batch, 1, 1, 2).expand(batch, 6, 9, 2)], -1)
    ref = mlp(z)
    with torch.set_grad_enabled(grad):
        out = mlp.forward_unfold3x3(feat, e)
    assert out.shape == ref.shape == (batch, 6, 9, 7)
    assert (out - ref).abs().max().item() <= 1e-5
    if not grad:
        return
    # and its gradients (training goes through the same path)
    feat.requires_grad_(True)
    g1, = torch.autograd.grad(mlp.forward_unfold3x3(feat, e).square().sum(), feat)
    z = unfold3x3(feat).permute(0, 2, 3, 1)
    if extra:
        z = torch.cat([z, e.view(batch, 1, 1, 2).expand(batch, 6, 9, 2)], -1)
    g2, = torch.autograd.grad(mlp(z).square().sum(), feat)
    assert (g1 - g2).abs().max().item() <= 1e-4


@pytest.mark.parametrize('h,H', [(7, 20), (10, 80), (9, 9), (12, 5)])
def test_row_bands_partition_rows_into_groups_sharing_their_lr_rows(h, H):
    model = tiny_lmliif()
    with torch.no_grad():
        state = model.prepare(torch.rand(1, 3, h, 6), torch.full((1, 1, 2), 2 / H))
    ys = make_coord((H,))[:, 0]
    rows = state.grid.axis_neighbours(ys, 0, True)
    bands = row_bands(rows, h)
    seen = torch.cat([idx for _, _, idx in bands])
    assert sorted(seen.tolist()) == list(range(H))                  # every row exactly once
    for r, first, idx in bands:
        idx = idx.view(-1, r)
        assert torch.equal(idx[:, 0], first) and torch.equal(idx, first.unsqueeze(1) + torch.arange(r))
        for pix, _ in rows:                                        # each group reads one pair of LR rows
            assert torch.equal(pix[idx], pix[first].unsqueeze(1).expand(-1, r))


@pytest.mark.parametrize('h,H,W,chunk', [(90, 720, 1280, 16384), (180, 1440, 2560, 16384), (90, 2700, 4800, 16384),
                                         (12, 30, 25, 100), (7, 7, 5, 3), (10, 80, 64, 1000)])
def test_blocks_follow_lr_row_runs_and_respect_the_chunk(h, H, W, chunk):
    from engine.render import QueryPlan
    plan = QueryPlan.build(tiny_lmliif().capabilities, (h, W // max(H // h, 1)), (H, W), chunk=chunk)
    ys = make_coord((H,))[:, 0]
    runs = plan.lr_row_runs(ys, h)
    pos = ((ys.double() + 1) * h / 2 - 0.5).floor()                  # independent: the LR row above each target row
    for a, b in runs:
        assert (pos[a:b] == pos[a]).all() and (b == H or pos[b] != pos[a])
    cover = torch.zeros(H, W, dtype=torch.int32)
    for (a, b), (c, d) in plan.blocks(H, W, runs):
        assert (b - a) * (d - c) <= chunk or (b - a) * 1 > chunk      # a single run row may exceed only if it must
        assert a in {r[0] for r in runs} and b in {r[1] for r in runs}   # whole runs
        cover[a:b, c:d] += 1
    assert (cover == 1).all()
