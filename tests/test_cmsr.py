"""CMSR: golden table building and rendering, level logic, edge cases, table files."""
from pathlib import Path

import pytest
import torch

import models
from models import cmsr
from utils.coords import make_cell, make_coord

from .conftest import load_golden

ROOT = Path(__file__).resolve().parents[1]


def golden_model(name):
    return models.make(load_golden(name)['model'], load_sd=True).eval()


def grid(H, W, clip=1.0, batch=1):
    return (make_coord((H, W)).unsqueeze(0).expand(batch, -1, -1),
            (make_cell((H, W)) * clip).unsqueeze(0).expand(batch, -1, -1))


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmlte_edsr'])
def test_golden_table_building(name):
    g = load_golden(f'cmsr_{name}')
    model = golden_model(name)
    S = g['build_scale']
    table = cmsr.initial_table(S)
    for inp in g['build_inps']:
        cmsr.update_table(model, inp, table, g['mse_threshold'], S, cell_clip=max(S / 4, 1))
    assert table == g['built_table'][S]


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmlte_edsr'])
def test_golden_rendering(name):
    g = load_golden(f'cmsr_{name}')
    model = golden_model(name)
    model.set_cmsr(g['render_table'])
    for r in g['renders']:
        model.cmsr_stats = cmsr.RenderStats()
        coord, cell = grid(*r['size'], r['cell_clip'])
        with torch.no_grad():
            pred = model(g['build_inps'][0], coord, cell)
        assert (pred - r['pred']).abs().max() <= 1e-4
        assert model.cmsr_stats.fraction == r['rendered_fraction']


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmlte_edsr'])
@pytest.mark.parametrize('table', [{8: {8: 1}}, {8: {1: 0, 2: 0, 4: 0, 6: 0, 8: 1}}])
def test_trivial_tables_equal_plain_fast_path(name, table):
    """Thresholds that send every pixel to the target scale reproduce the plain fast path."""
    case = load_golden(name)
    model = models.make(case['model'], load_sd=True).eval()
    inp = case['inp']
    h, w = inp.shape[-2:]
    coord, cell = grid(8 * h, 8 * w, 2.0)
    with torch.no_grad():
        plain = model(inp, coord, cell)
        model.set_cmsr(table, exact_grid=True)
        exact = model(inp, coord, cell)
        model.set_cmsr(table)
        published = model(inp, coord, cell)
    assert (exact - plain).abs().max() <= 1e-6
    # the published level grid differs from the exact one only within S/2 pixels of the border
    inner = (slice(None), slice(4, -4), slice(4, -4))
    diff = (published - plain).view(1, 8 * h, 8 * w, 3).permute(0, 3, 1, 2)[(slice(None),) + inner]
    assert diff.abs().max() <= 1e-5


def test_scale_within_training_range_ignores_cmsr():
    g = load_golden('cmsr_lmliif_edsr')
    model = golden_model('lmliif_edsr')
    inp = g['build_inps'][0]
    coord, cell = grid(4 * 24, 4 * 20)
    with torch.no_grad():
        plain = model(inp, coord, cell)
        model.set_cmsr(g['render_table'])
        assert torch.equal(model(inp, coord, cell), plain)


def test_batch_of_two_matches_single_images():
    g = load_golden('cmsr_lmliif_edsr')
    model = golden_model('lmliif_edsr')
    model.set_cmsr(g['render_table'])
    inp = torch.cat(g['build_inps'])
    coord, cell = grid(8 * 24, 8 * 20, 2.0, batch=2)
    with torch.no_grad():
        both = model(inp, coord, cell)
        singles = torch.cat([model(inp[i:i + 1], coord[:1], cell[:1]) for i in range(2)])
    assert torch.equal(both, singles)
    assert (both[:1] - g['renders'][0]['pred']).abs().max() <= 1e-4


def test_empty_last_level_still_gives_the_target_grid():
    """Published code returns a wrongly shaped tensor when the last level selects nothing (B11)."""
    model = golden_model('lmliif_edsr')
    inp = load_golden('lmliif_edsr')['inp']
    table = {8: {1: 0.2, 2: 100, 4: 200}}    # levels: m <= .2 at x1, .2..100 at x2, >= 100 at x4 (empty)
    model.set_cmsr(table)
    coord, cell = grid(8 * 24, 8 * 20, 2.0)
    with torch.no_grad():
        out = model(inp, coord, cell)
        model.set_cmsr({8: {1: 0.2, 2: 100}})  # the same renders without the empty level
        ref = model(inp, coord, cell)
    assert out.shape == (1, 8 * 24 * 8 * 20, 3)
    assert torch.equal(out, ref)


def test_all_levels_empty_gives_bilinear_input():
    model = golden_model('lmliif_edsr')
    inp = load_golden('lmliif_edsr')['inp']
    model.set_cmsr({8: {0.5: 100, 1: 200}})  # the x0.5 level is skipped; x1 selects m >= 100: nothing
    coord, cell = grid(8 * 24, 8 * 20, 2.0)
    with torch.no_grad():
        out = model(inp, coord, cell)
    assert torch.allclose(out[0], cmsr.bilinear(inp, coord[0]))
    assert model.cmsr_stats.renders == 0


def test_level_construction_matches_spec_examples():
    t = cmsr.load_tables(ROOT / 'configs/cmsr/result/edsr-b_lm-liif_mse2e-5.yaml')
    assert [s for s, *_ in cmsr.levels(t[12], 12)] == [1, 2, 4, 6]          # final resample to x12
    assert [s for s, *_ in cmsr.levels(t[8], 8)] == [1, 2, 4, 6, 8]
    assert cmsr.choose_table(t, 7)[0] == 8 and cmsr.choose_table(t, 30)[0] == 18
    assert cmsr.choose_table(t, 6)[0] == 6
    lv = cmsr.levels(t[6], 6)                                               # 1: .32, 2: .41, 4: .55, 6: 1
    assert lv == [(1, 0, 0.32), (2, 0.32, 0.41), (4, 0.41, 0.55), (6, 0.55, 1)]
    m = torch.tensor([0.1, 0.35, 0.5, 0.9])
    assert cmsr.select(m, 0, 4, 0, 0.32).tolist() == [True, False, False, False]
    assert cmsr.select(m, 1, 4, 0.32, 0.41).tolist() == [False, True, False, False]
    assert cmsr.select(m, 3, 4, 0.55, 1).tolist() == [False, False, False, True]


@pytest.mark.parametrize('name', ['edsr-b_lm-liif_mse2e-5', 'edsr-b_lm-lte_mse2e-5', 'edsr-b_lm-ciaosr_mse2e-5'])
def test_shipped_tables_load(name):
    t = cmsr.load_tables(ROOT / f'configs/cmsr/result/{name}.yaml')
    assert list(t) == sorted(t) and all(isinstance(v, dict) for v in t.values())


def test_missing_or_bad_table_files_are_errors(tmp_path):
    model = golden_model('lmliif_edsr')
    with pytest.raises(cmsr.CMSRError, match='not found'):
        model.set_cmsr(str(tmp_path / 'missing.yaml'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('8: {1: high}\n')
    with pytest.raises(cmsr.CMSRError, match='threshold'):
        cmsr.load_tables(bad)


def test_table_roundtrip(tmp_path):
    t = {12: {1: 0.3, 2: 0.4, 12: 1}, 6: {1: 0.2, 6: 1.0}}
    cmsr.save_tables(tmp_path / 't.yaml', t)
    back = cmsr.load_tables(tmp_path / 't.yaml')
    assert back == t and list(back) == [6, 12]


def test_prune_unvalidated_levels():
    table = {1: 0.09, 1.5: 0.09, 2: 0.09, 3: 0.33, 4: 1, 6: 1, 8: 1.0}
    pruned = cmsr.prune_unvalidated(table)
    assert pruned == {1: 0.09, 1.5: 0.09, 2: 0.09, 3: 0.33, 8: 1.0}
    assert [s for s, *_ in cmsr.levels(table, 8)][-1] == 6          # published: nothing reaches x8
    assert [s for s, *_ in cmsr.levels(pruned, 8)][-1] == 8


def test_render_stats_count_the_render_mlp_macs_saved():
    model = golden_model('lmliif_edsr')
    inp = load_golden('lmliif_edsr')['inp']
    h, w = inp.shape[-2:]
    Q = 8 * h * 8 * w
    per_query = 4 * sum(m.in_features * m.out_features for m in model.imnet.modules()
                        if isinstance(m, torch.nn.Linear))          # 4 neighbours x the render MLP
    coord, cell = grid(8 * h, 8 * w, 2.0)
    with torch.no_grad():
        model.set_cmsr({8: {1: 100}})             # everything at x1, then bilinear to x8
        model(inp, coord, cell)
        s = model.cmsr_stats
        assert s.renders == h * w and s.render_share == h * w / Q
        assert s.macs_saved == (Q - h * w) * per_query
        model.cmsr_stats = cmsr.RenderStats()
        model.set_cmsr({8: {8: 1}})               # everything at the target: nothing saved
        model(inp, coord, cell)
        assert model.cmsr_stats.renders == Q and model.cmsr_stats.macs_saved == 0
    assert 'not used' in cmsr.RenderStats().summary()
    assert '0.00 GMACs saved' in model.cmsr_stats.summary()
