"""The rendering engine (engine/render.py behind engine.inference.Upscaler) against direct model calls:
window padding, cell clipping, chunking, tiling, capabilities; the LM fast path against the explicit one."""
import numpy as np
import pytest
import torch

import demo
import models
from engine.inference import Upscaler, exact_overlap, window_pad
from engine.render import Dense, QueryPlan, RenderStats
from models.complexity import decoder_macs
from utils.coords import make_cell, make_coord, target_axis, target_range

from .conftest import load_golden


def golden_model(name):
    return models.make(load_golden(name)['model'], load_sd=True).eval()


def direct(model, img, size, clip=1.0):
    H, W = size
    with torch.no_grad():
        out = model((img - 0.5) / 0.5, make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0) * clip)
    return (out * 0.5 + 0.5).clamp(0, 1).view(1, H, W, 3).permute(0, 3, 1, 2)


def test_upscaler_equals_model_forward_with_published_clipping():
    model = golden_model('lmlte_edsr')
    img = torch.rand(1, 3, 24, 20)
    # the engine answers grids with query_grid: the same values up to float rounding (summation order)
    assert (Upscaler(model)(img, (48, 40)) - direct(model, img, (48, 40))).abs().max() < 1e-6
    # x8: cells clipped by 8 / 4 = 2, as test.py / demo.py of the published code
    assert (Upscaler(model, bsize=997)(img, (192, 160)) - direct(model, img, (192, 160), 2.0)).abs().max() < 1e-6
    # clipping switched off, or a different training scale
    assert (Upscaler(model, clip_cells=False)(img, (192, 160)) - direct(model, img, (192, 160))).abs().max() < 1e-6
    assert (Upscaler(model, max_train_scale=2)(img, (192, 160)) - direct(model, img, (192, 160), 4.0)).abs().max() < 1e-6


def test_asymmetric_scales_clip_each_axis():
    model = golden_model('lmliif_edsr')
    img = torch.rand(1, 3, 12, 10)
    out = Upscaler(model)(img, (96, 20))              # x8 rows (clipped by 2), x2 columns (not clipped)
    with torch.no_grad():
        coord = make_coord((96, 20)).unsqueeze(0)
        cell = make_cell((96, 20)).unsqueeze(0) * torch.tensor([2.0, 1.0])
        ref = (model((img - 0.5) / 0.5, coord, cell) * 0.5 + 0.5).clamp(0, 1)
    assert (out - ref.view(1, 96, 20, 3).permute(0, 3, 1, 2)).abs().max() < 1e-6


def test_window_padding_reproduces_the_published_swinir_protocol():
    """Pad 1..8 px by mirroring, query make_coord of the padded HR grid, crop: the published test.py."""
    model = golden_model('liif_edsr')                 # any model: the protocol is about coordinates
    img = torch.rand(1, 3, 21, 18)
    s = 3
    padded = window_pad((img - 0.5) / 0.5, 8, published=True)
    assert padded.shape[-2:] == (24, 24)
    Hp, Wp = s * 24, s * 24
    with torch.no_grad():
        ref = model(padded, make_coord((Hp, Wp)).unsqueeze(0), make_cell((Hp, Wp)).unsqueeze(0))
    ref = (ref * 0.5 + 0.5).clamp(0, 1).view(1, Hp, Wp, 3).permute(0, 3, 1, 2)[:, :, :21 * s, :18 * s]
    out = Upscaler(model, window=8, published_window=True)(img, (21 * s, 18 * s))
    assert torch.equal(out, ref)
    assert torch.equal(target_axis(63, 21, 24), make_coord((72,))[:63, 0])


def test_minimal_window_padding_for_multiples_of_the_window():
    x = torch.rand(1, 3, 16, 24)
    assert window_pad(x, 8) is x
    assert window_pad(x, 8, published=True).shape[-2:] == (24, 32)   # the published rule always pads


def test_target_axis_and_ranges_agree_with_an_independent_float64_computation():
    for n_out, n_lr, n_frame, origin in ((97, 30, 30, 0), (83, 27, 35, 4), (20, 8, 16, 0), (75, 30, 32, 11)):
        u = (np.arange(n_out) + 0.5) * n_lr / n_out
        ref = torch.from_numpy(2 * (u - origin) / n_frame - 1).float()
        assert (target_axis(n_out, n_lr, n_frame, origin=origin) - ref).abs().max() <= 1e-6
        for lo, hi in ((0, 7), (7, 13), (13, n_lr), (5, 5)):
            inside = np.nonzero((u >= lo) & (u < hi))[0]
            expect = (int(inside[0]), int(inside[-1]) + 1) if inside.size else None
            i0, i1 = target_range(lo, hi, n_out, n_lr)
            assert (i0, i1) == expect if expect else i0 == i1


def test_capabilities_describe_every_kind():
    lm = golden_model('lmliif_edsr')
    caps = lm.capabilities
    assert caps.kind == 'implicit' and caps.modulated and caps.name == 'lmliif' and caps.window == 0
    assert caps.receptive_radius == 6 and exact_overlap(lm) == 9 and caps.intensity_range == (0.0, 1.0)
    assert golden_model('lmlte_edsr').capabilities.intensity_range == (0.0, 0.5)
    assert not golden_model('liif_edsr').capabilities.modulated
    swin = models.make(load_golden('lmlte_swinir')['model']).capabilities
    assert swin.window == 8 and swin.exact_tile_overlap is None      # attention: no exact overlap
    ig = models.make({'name': 'igconv-edsr-baseline', 'args': {'encoder_args': {'n_resblocks': 1}}}).capabilities
    assert ig.kind == 'grid' and ig.integer_scales_only
    assert models.make({'name': 'bicubic'}).capabilities.kind == 'image'


@pytest.mark.parametrize('name', ['lmliif_edsr', 'liif_edsr'])
@pytest.mark.parametrize('scale', [2.5, 4, 8])
def test_tiled_equals_untiled_for_cnn_encoders(name, scale):
    model = golden_model(name)
    img = torch.rand(1, 3, 26, 23)
    size = (int(26 * scale), int(23 * scale))
    full = Upscaler(model)(img, size)
    for tile in (7, 12):
        assert (Upscaler(model, tile=tile)(img, size) - full).abs().max() <= 1e-5, (tile, scale)


def test_render_stats_and_closed_form_macs():
    model = golden_model('lmliif_edsr')
    img = torch.rand(2, 3, 12, 10)
    plan = QueryPlan.build(model.capabilities, (12, 10), (96, 80))
    with torch.no_grad():
        _, stats = Dense(plan)(model, (img - 0.5) / 0.5, RenderStats())
    assert stats.queries_answered == 2 * 96 * 80
    assert stats.macs == 2 * decoder_macs(model, (12, 10), (96, 80))


class CallLog:
    """Wraps ``type(model).query`` and ``query_grid`` to record the number of queries of every call."""

    def __init__(self, monkeypatch, cls):
        self.sizes = []
        query, query_grid = cls.query, cls.query_grid

        def logged_query(model, state, coord, cell):
            self.sizes.append(coord.shape[0] * coord.shape[1])
            return query(model, state, coord, cell)

        def logged_grid(model, state, ys, xs, cell):
            self.sizes.append(cell.shape[0] * ys.numel() * xs.numel())
            return query_grid(model, state, ys, xs, cell)
        monkeypatch.setattr(cls, 'query', logged_query)
        monkeypatch.setattr(cls, 'query_grid', logged_grid)


def test_engine_uses_the_model_chunk(monkeypatch):
    model = golden_model('lmliif_edsr')
    chunk = model.capabilities.chunk
    assert 2048 <= chunk <= 65536
    log = CallLog(monkeypatch, type(model))
    img = torch.rand(1, 3, 40, 36)
    Upscaler(model)(img, (320, 288))                 # 92,160 queries
    assert max(log.sizes) <= chunk and sum(log.sizes) == 320 * 288
    assert len(log.sizes) <= 2 * (320 * 288) // chunk + 2         # whole rows per call, near the chunk


def test_demo_queries_in_the_model_chunks(monkeypatch, tmp_path):
    from PIL import Image
    path = tmp_path / 'lmliif.pth'
    torch.save({'model': load_golden('lmliif_edsr')['model']}, path)
    model = models.load_model(path)
    chunk = model.capabilities.chunk
    log = CallLog(monkeypatch, type(model))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / 'in.png')
    assert demo.main(['--input', str(tmp_path / 'in.png'), '--output', str(tmp_path / 'out.png'), '--scale', '8',
                      '--model', str(path), '--device', 'cpu', '--quiet']) == 0
    assert sum(log.sizes) == 320 * 384 and max(log.sizes) <= chunk
    assert max(log.sizes) > chunk // 2                       # not tiny bands either


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmliif_edsr_nomodin', 'lmlte_edsr'])
def test_fast_path_equals_explicit_path(name):
    model = golden_model(name)
    inp = load_golden(name)['inp']
    g = torch.Generator().manual_seed(1)
    coord = torch.rand(1, 5000, 2, generator=g) * 2 - 1
    cell = torch.full((1, 5000, 2), 2 / (8 * 24)) * 2
    with torch.no_grad():
        state = model.prepare(inp, cell)
        fast = model.query_fast(state, coord, cell)
        explicit = model.query_explicit(state, coord, cell)
    assert (fast - explicit).abs().max() <= 1e-5


def test_bicubic_model_any_size():
    out = Upscaler(models.make({'name': 'bicubic'}))(torch.rand(1, 3, 10, 12), (25, 31))
    assert out.shape == (1, 3, 25, 31)


def test_plan_refuses_bad_inputs():
    caps = golden_model('lmliif_edsr').capabilities
    with pytest.raises(ValueError, match='window'):
        QueryPlan.build(caps, (10, 10), (20, 20), window=-3)
    with pytest.raises(ValueError, match='chunk'):
        QueryPlan.build(caps, (10, 10), (20, 20), chunk=-5)
    with pytest.raises(ValueError, match='tile'):
        Upscaler(golden_model('lmliif_edsr'), tile=0)(torch.rand(1, 3, 10, 10), (20, 20))
    with pytest.raises(ValueError, match='overlap'):
        Upscaler(golden_model('lmliif_edsr'), tile=4, tile_overlap=-3)(torch.rand(1, 3, 10, 10), (20, 20))


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmliif_edsr_nomodin', 'lmlte_edsr'])
def test_engine_grid_path_reproduces_the_golden_cases(name):
    """The engine's dense strategy (LM models: ``query_grid``) on every golden query grid, <= 1e-4."""
    case = load_golden(name)
    model = models.make(case['model'], load_sd=True).eval()
    assert model.capabilities.grid_queries
    inp = case['inp']
    for q in case['queries']:
        H, W = q['size']
        plan = QueryPlan.build(model.capabilities, tuple(inp.shape[-2:]), (H, W))
        assert plan.cell(plan.frame_size()) == pytest.approx((2 / H * q['cell_clip'], 2 / W * q['cell_clip']))
        with torch.no_grad():
            out, _ = Dense(plan)(model, inp)
        assert (out.permute(0, 2, 3, 1).reshape(1, -1, 3) - q['pred']).abs().max() <= 1e-4, q['size']


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmliif_edsr_nomodin', 'lmlte_edsr'])
@pytest.mark.parametrize('size', [(192, 160), (60, 50), (77, 91)])
def test_grid_path_equals_general_fast_path(name, size):
    model = golden_model(name)
    inp = torch.cat([load_golden(name)['inp'], torch.rand(1, 3, 24, 20) * 2 - 1])
    H, W = size
    cell = make_cell((H, W)).unsqueeze(0).expand(2, -1, -1) * max(H / 24 / 4, 1)
    with torch.no_grad():
        state = model.prepare(inp, cell)
        fast = model.query_fast(state, make_coord((H, W)).unsqueeze(0).expand(2, -1, -1), cell)
        grid = model.query_grid(state, make_coord((H,))[:, 0], make_coord((W,))[:, 0], cell[:, 0])
    assert (grid.reshape(2, -1, 3) - fast).abs().max() <= 1e-5
