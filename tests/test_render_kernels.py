"""The LM render MLP's product kernels (``models/decoders/render_kernels.py``): each kernel against a float64
product on random inputs of odd sizes, and every LM model's grid path with each kernel against an independent,
straightforward per-query implementation of the modulated render MLP (the published formula, written here
from the model's weights) -- LM-LIIF, LM-LTE, LM-CiaoSR and a CMSR render."""

import pytest
import torch

import models
from engine import cmsr
from engine.inference import Upscaler
from models.decoders import render_kernels
from utils.coords import make_coord

from .conftest import load_golden

PRODUCTS = [n for n in render_kernels.KERNELS if render_kernels.runs_on(n, 'cpu', torch.float32)]
#: every render kernel of the grid path: the products, and the fused C kernel (which must build here: a machine
#: without a C compiler fails these cases rather than skipping them; tests/test_fused_render.py covers its refusals)
KERNELS = PRODUCTS + ['fused']


def test_every_kernel_is_tried_on_the_cpu():
    assert set(render_kernels.CANDIDATES['cpu']) == set(render_kernels.KERNELS)
    assert 'mm' in PRODUCTS and render_kernels.choose('cpu', torch.float32, 16) in PRODUCTS


@pytest.mark.parametrize('kernel', PRODUCTS)
@pytest.mark.parametrize('rows, k, n', [(1, 16, 16), (37, 16, 16), (1001, 16, 16), (259, 8, 8), (97, 13, 7)])
def test_kernel_equals_the_product(kernel, rows, k, n):
    g = torch.Generator().manual_seed(rows + k)
    x = torch.randn(rows, k, generator=g)
    wt = torch.randn(k, n, generator=g)
    out = torch.full((rows, n), float('nan'))
    y = render_kernels.KERNELS[kernel](x, wt, out)
    assert y.shape == (rows, n) and y.is_contiguous()
    assert (y.double() - x.double() @ wt.double()).abs().max().item() <= 1e-5


def test_unknown_kernel_is_refused():
    model = models.make(load_golden('lmliif_edsr')['model'])
    with pytest.raises(ValueError, match="render kernel must be one of"):
        model.set_render_mode(kernel='blas9')


# --- an independent implementation of the LM decoders' eval output on a query grid ---------------------------

def reference_render(imnet, x0, mod):
    """The modulated render MLP, one query per row, in float64: ``x0`` is the render input (N, in_dim),
    ``mod`` the neighbour's modulation row (N, >= M). a_k = (W_k x + b_k)(1 + s_k) + t_k, x = relu(a_k)."""
    hd, D = imnet.hidden_dim, imnet.hidden_depth
    x = x0.double()
    mod = mod.double()
    off = hd * D if imnet.mod_scale else 0
    for k in range(D):
        layer = imnet.layers[2 * k]
        x = x @ layer.weight.double().t() + layer.bias.double()
        if imnet.mod_scale:
            x = x * (1 + mod[:, k * hd:(k + 1) * hd])
        if imnet.mod_shift:
            x = x + mod[:, off + k * hd:off + (k + 1) * hd]
        x = x.clamp_min(0)
    last = imnet.layers[-1]
    return x @ last.weight.double().t() + last.bias.double()


def reference_grid(model, inp, size):
    """(H*W, 3) for one image: for every query of the grid and each of the 4 ensemble neighbours, the render
    input built from the model's per-pixel state exactly as the papers write it, the render MLP in float64
    and the area-weighted blend (plus LM-LTE's / LM-CiaoSR's skip, taken from the model)."""
    H, W = size
    coord = make_coord((H, W)).view(1, -1, 2)
    cell = torch.tensor([2 / H, 2 / W]).view(1, 1, 2).expand(1, H * W, 2)
    with torch.no_grad():
        state = model.prepare(inp, cell)
        grid = state.grid
        nb = grid.neighbours(coord, True)
        h, w = grid.size
        idx = (nb.index[..., 0] * w + nb.index[..., 1]).reshape(-1) if nb.index.dim() == 4 else nb.index.reshape(-1)
        K = nb.weight.shape[0]
        rel = nb.rel_coord.reshape(-1, 2)
        rel_cell = grid.relative_cell(cell).reshape(-1, 2).repeat(K, 1)
        x0 = model.traced_render_input(state, idx, rel, rel_cell)
        preds = reference_render(model.imnet, x0, state.mod[idx]).view(K, H * W, -1)
        out = (preds * nb.weight.double().view(K, H * W, 1)).sum(0)
        skip = model.skip(state, coord)
    return out.float() + (0 if skip is None else skip[0])


@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmlte_edsr', 'lmciaosr_edsr'])
def test_grid_path_with_each_kernel_equals_the_reference(name, kernel):
    case = load_golden(name)
    model = models.make(case['model'], load_sd=True).eval().set_render_mode(kernel=kernel)
    inp = case['inp'][:1, :, :9, :11]
    H, W = 9 * 3 + 2, 11 * 3 + 1           # odd sizes, fractional scale
    ref = reference_grid(model, inp, (H, W))
    with torch.no_grad():
        got = Upscaler(model)(inp * 0.5 + 0.5, (H, W)).clamp(0, 1)
    ref = ref.view(H, W, 3).permute(2, 0, 1).unsqueeze(0).mul(0.5).add(0.5).clamp(0, 1)
    assert (got - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize('kernel', KERNELS)
def test_cmsr_render_with_each_kernel(kernel):
    """CMSR levels go through the same grid path: every kernel gives the golden CMSR image (published code's
    output, on the published level grid) to 1e-4 and the 'mm' kernel's image to 1e-6."""
    g = load_golden('cmsr_lmliif_edsr')
    model = models.make(load_golden(g['model'])['model'], load_sd=True).eval()
    tables = cmsr.validate_tables(g['render_table'], 'tables', model.capabilities)
    r = g['renders'][0]
    H, W = r['size']
    img = g['build_inps'][0] * 0.5 + 0.5
    with torch.no_grad():
        base = Upscaler(model.set_render_mode(kernel='mm'), cmsr_tables=tables, cmsr_exact_grid=False)(img, (H, W))
        got = Upscaler(model.set_render_mode(kernel=kernel), cmsr_tables=tables, cmsr_exact_grid=False)(img, (H, W))
    assert (got - base).abs().max().item() <= 1e-6
    pred = (got - 0.5) / 0.5
    golden = r['pred'].view(1, H, W, 3).permute(0, 3, 1, 2).clamp(-1, 1)
    assert (pred - golden).abs().max().item() <= 1e-4
