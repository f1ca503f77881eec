"""The parts of training, each alone: registries, one optimizer step (accumulation, EMA, AMP, clipping),
validation (fixed per-scale sets, no cap, non-finite predictions), end of epoch (nothing saved when the
weights are not finite). No reference data needed."""
import copy
import math

import pytest
import torch

from engine import components
from engine.components import (LOSSES, METRICS, WeightedLoss, build_metric, build_optimizer, build_scheduler,
                               register_metric)
from engine.distributed import Dist
from engine.training import (Options, TrainingDiverged, end_epoch, micro_batch_groups, setup_run, train_epoch,
                             train_step, validate)
from models.checkpoint import load_checkpoint
from utils.config import ConfigError, load_config

from .conftest import make_images, write_config


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp('images'), n=4, size=48)


def tiny_run(tmp_path, data, name='run', options=None, **changes):
    cfg = load_config(write_config(tmp_path / f'{name}.yaml', data, repeat=2, sample_q=64))
    cfg.update(changes)
    return setup_run(cfg, str(tmp_path / name), Dist(), options or Options(progress=False))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- registries
def test_optimizer_and_scheduler_from_published_keys():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer({'name': 'adam', 'args': {'lr': '1e-4', 'betas': [0.9, 0.99]}}, p)
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]['lr'] == 1e-4 and opt.param_groups[0]['betas'] == (0.9, 0.99)
    sched = build_scheduler({'multi_step_lr': {'milestones': [2, 4], 'gamma': 0.5}}, opt, 6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5]
    cos = build_scheduler({'scheduler': {'name': 'cosine', 'args': {'eta_min': 0}}},
                          build_optimizer({'name': 'sgd', 'args': {'lr': 1.0}}, p), 4)
    seen = []
    for _ in range(4):
        seen.append(cos.optimizer.param_groups[0]['lr'])
        cos.optimizer.step()
        cos.step()
    assert seen == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)], abs=1e-12)


@pytest.mark.parametrize('spec, needle', [
    ({'optimizer': {'name': 'adan', 'args': {}}}, "unknown optimizer 'adan' (did you mean 'adam'?)"),
    ({'optimizer': {'name': 'adam', 'args': {'lrr': 1}}}, "does not take argument(s) 'lrr'"),
    ({'optimizer': {'name': 'adam', 'args': {'lr': 'fast'}}}, 'optimizer.args.lr must be a number'),
    ({'scheduler': {'name': 'cosin'}}, "unknown scheduler 'cosin'"),
    ({'scheduler': {'name': 'cosine'}, 'multi_step_lr': {'milestones': [1]}}, 'both'),
    ({'loss': {'l2': 1.0}}, "unknown loss 'l2'"),
    ({'loss': {'l1': 'heavy'}}, 'loss.l1 must be a number'),
    ({'val_metric': 'pnsr'}, "unknown metric 'pnsr' (did you mean 'psnr'?)"),
])
def test_unknown_components_are_one_line_config_errors(spec, needle):
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError) as e:
        if 'optimizer' in spec:
            build_optimizer(spec['optimizer'], p)
        elif 'loss' in spec:
            WeightedLoss(spec['loss'])
        elif 'val_metric' in spec:
            build_metric(spec['val_metric'])
        else:
            build_scheduler(spec, torch.optim.SGD(p, lr=1), 3)
    assert needle in str(e.value) and '\n' not in str(e.value)


@LOSSES.register('test-half-l1')
def half_l1(pred, gt, factor=0.5):
    return factor * (pred - gt).abs().mean()


@register_metric('test-neg-mae', higher_is_better=True)
def neg_mae(pred, gt):
    return -(pred - gt).abs().mean().item()


def test_a_registered_loss_and_metric_are_used_by_name():
    pred, gt = torch.rand(2, 5, 3), torch.rand(2, 5, 3)
    l1 = (pred - gt).abs().mean()
    loss = WeightedLoss({'test-half-l1': {'weight': 3.0, 'args': {'factor': 2.0}}, 'l1': 1.0})
    assert torch.allclose(loss(pred, gt), 3.0 * 2.0 * l1 + l1)
    with pytest.raises(ConfigError, match="does not take argument"):
        WeightedLoss({'test-half-l1': {'args': {'scale': 1}}})
    assert build_metric('test-neg-mae')(pred, gt) == pytest.approx(-l1.item())
    assert METRICS.get('psnr').higher_is_better and not METRICS.get('l1').higher_is_better


def test_psnr_metric_is_the_batch_psnr_without_cap():
    gt = torch.rand(3, 10, 3)
    pred = gt + 0.01 * torch.randn_like(gt)
    mse = (pred.double() - gt.double()).pow(2).mean().item()
    assert components.psnr(pred, gt) == pytest.approx(-10 * math.log10(mse), abs=1e-4)
    assert components.psnr(gt, gt) == math.inf          # no 100 dB cap
    assert math.isnan(components.psnr(torch.full_like(gt, math.nan), gt))


# ---------------------------------------------------------------- one step
def test_micro_batch_groups():
    assert [len(g) for g in micro_batch_groups(range(7), 3)] == [3, 3, 1]


def test_accumulating_micro_batches_equals_one_large_batch(tmp_path, data):
    # SGD: unlike Adam, its step is proportional to the gradient, so a wrong weighting would show
    sgd = {'name': 'sgd', 'args': {'lr': 0.5, 'momentum': 0.9}}
    big = tiny_run(tmp_path, data, 'big', optimizer=sgd)
    small = tiny_run(tmp_path, data, 'small', accumulate=2, optimizer=sgd)
    try:
        assert big.train.loader.batch_size == 4 and small.train.loader.batch_size == 2
        for a, b in zip(big.model.parameters(), small.model.parameters()):
            assert torch.equal(a, b)
        sa, sb = train_epoch(big, 1), train_epoch(small, 1)
        assert sa.steps == sb.steps == 2
        assert sa.loss == pytest.approx(sb.loss, abs=1e-6)
        diff = max((a - b).abs().max().item() for a, b in zip(big.model.parameters(), small.model.parameters()))
        moved = max((a - b).abs().max().item() for a, b in zip(big.model.parameters(),
                                                                 tiny_run(tmp_path, data, 'init').model.parameters()))
        assert diff <= 1e-6 and moved > 1e-3
    finally:
        big.close(), small.close()


def test_ema_update_validation_and_checkpoint(tmp_path, data):
    run = tiny_run(tmp_path, data, ema_decay=0.9)
    try:
        w0 = params(run.model)
        batch = next(iter(run.train.loader))
        train_step(run, [batch])
        w1 = params(run.model)
        for e, a, b in zip(run.ema.model.parameters(), w0, w1):
            assert torch.allclose(e, 0.9 * a + 0.1 * b, atol=1e-7)
        stats = train_epoch(run, 1)
        msg = end_epoch(run, 1, stats)
        ckpt = load_checkpoint(tmp_path / 'run/epoch-last.pth')
        for k, v in run.ema.model.state_dict().items():
            assert torch.equal(ckpt['model']['sd'][k], v)
            assert torch.equal(ckpt['model_params']['sd'][k], run.model.state_dict()[k])
        # validation used the EMA weights: recompute independently for both weight sets
        val = run.val_sets[0][1]

        def batch_psnr(model):
            total = count = 0
            with torch.no_grad():
                for b in val.loader:
                    pred = model((b['inp'] - 0.5) / 0.5, b['coord'], b['cell']) * 0.5 + 0.5
                    mse = (pred.clamp(0, 1) - b['gt']).pow(2).mean().item()
                    total += -10 * math.log10(mse) * len(b['inp'])
                    count += len(b['inp'])
            return total / count
        ema_psnr, raw_psnr = batch_psnr(run.ema.model.eval()), batch_psnr(run.model.eval())
        assert ckpt['best_val'] == pytest.approx(ema_psnr, abs=1e-5)
        assert abs(ema_psnr - raw_psnr) > 1e-4
        assert f'psnr={ema_psnr:.4f}' in msg
    finally:
        run.close()


@pytest.mark.parametrize('amp, dtype', [(None, torch.float32), ('bf16', torch.bfloat16), ('fp16', torch.float16)])
def test_amp_changes_the_compute_dtype(tmp_path, data, amp, dtype):
    run = tiny_run(tmp_path, data, options=Options(progress=False, amp=amp))
    try:
        seen = []
        for m in run.model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        loss, _, _ = train_step(run, [next(iter(run.train.loader))])
        assert len(seen) > 5 and set(seen) == {dtype} and math.isfinite(loss)
        assert all(p.dtype == torch.float32 for p in run.model.parameters())
        assert (run.scaler is not None) == (amp == 'fp16')
    finally:
        run.close()


def test_gradient_clipping_bounds_the_norm(tmp_path, data):
    def grad_norm(model):
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()
    free = tiny_run(tmp_path, data, 'free')
    clipped = tiny_run(tmp_path, data, 'clipped', options=Options(progress=False, grad_clip=1e-3))
    try:
        batch = next(iter(free.train.loader))
        _, _, none = train_step(free, [batch])
        _, _, before = train_step(clipped, [batch])
        assert none is None
        assert before == pytest.approx(grad_norm(free.model), rel=1e-5) and before > 1e-2
        assert grad_norm(clipped.model) <= 1e-3 * (1 + 1e-4)
    finally:
        free.close(), clipped.close()


# ---------------------------------------------------------------- validation and end of epoch
class NaNModel(torch.nn.Module):
    def forward(self, inp, coord, cell):
        return torch.full(coord.shape[:-1] + (3,), math.nan)


def test_non_finite_predictions_stop_validation(tmp_path, data):
    run = tiny_run(tmp_path, data)
    try:
        with pytest.raises(TrainingDiverged, match='non-finite'):
            validate(NaNModel(), run.val_sets[0][1].loader, torch.device('cpu'), run.metric)
    finally:
        run.close()


def test_non_finite_weights_save_nothing(tmp_path, data):
    run = tiny_run(tmp_path, data)
    try:
        stats = train_epoch(run, 1)
        with torch.no_grad():
            next(run.model.parameters())[0].fill_(math.inf)
        with pytest.raises(TrainingDiverged, match='weights are not finite'):
            end_epoch(run, 1, stats)
        assert not (tmp_path / 'run/epoch-last.pth').exists()
        assert not (tmp_path / 'run/epoch-best.pth').exists()
    finally:
        run.close()


def test_setup_checks_settings_before_writing(tmp_path, data):
    for change, needle in [({'accumulate': 0}, 'accumulate must be an integer >= 1'),
                           ({'accumulate': 3}, 'not divisible'),
                           ({'ema_decay': 1.5}, 'ema_decay must be in (0, 1)'),
                           ({'val_scales': [2, -1]}, 'val_scales must be'),
                           ({'epoch_max': 'ten'}, 'epoch_max must be an integer')]:
        with pytest.raises(ConfigError) as e:
            tiny_run(tmp_path, data, 'bad', **change)
        assert needle in str(e.value), (change, str(e.value))
        assert not (tmp_path / 'bad').exists()


def test_val_scales_need_a_wrapper_with_a_scale(tmp_path, data):
    cfg = load_config(write_config(tmp_path / 'c.yaml', data))
    cfg['val_scales'] = [2, 3]
    run = setup_run(copy.deepcopy(cfg), str(tmp_path / 'ok'), Dist(), Options(progress=False))
    try:
        assert [s for s, _ in run.val_sets] == [2, 3]
        ds = run.val_sets[1][1].dataset
        assert ds.scale_min == ds.scale_max == 3
    finally:
        run.close()


def test_best_checkpoint_is_chosen_by_the_mean_over_scales(tmp_path, data, monkeypatch):
    import engine.training as training
    cfg_scales = [2, 3, 4]
    run = tiny_run(tmp_path, data, val_scales=cfg_scales)
    per_epoch = {1: {2: 30.0, 3: 20.0, 4: 10.0},      # mean 20
                 2: {2: 35.0, 3: 18.0, 4: 5.0},       # best x2, worse mean (19.33)
                 3: {2: 29.0, 3: 21.0, 4: 12.0}}      # worst x2, best mean (20.67)
    epoch_now = {}
    monkeypatch.setattr(training, 'validate_all', lambda r: per_epoch[epoch_now['e']])
    try:
        stats = train_epoch(run, 1)
        bests = []
        for e in (1, 2, 3):
            epoch_now['e'] = e
            msg = end_epoch(run, e, stats)
            assert f'x2={per_epoch[e][2]:.4f}' in msg and f'mean={sum(per_epoch[e].values()) / 3:.4f}' in msg
            bests.append(load_checkpoint(tmp_path / 'run/epoch-best.pth')['epoch'])
        assert bests == [1, 1, 3]
        assert load_checkpoint(tmp_path / 'run/epoch-best.pth')['best_val'] == pytest.approx(62 / 3)
    finally:
        run.close()


def test_unit_range_models_train_on_01_images(tmp_path, data):
    """Models declaring capabilities.input_range 'unit' (published BasicSR architectures) get [0, 1]
    inputs and targets; the others (x - 0.5) / 0.5."""
    from engine.training import forward_batch
    batch = {'inp': torch.rand(2, 3, 4, 4), 'gt': torch.rand(2, 3, 8, 8), 'scale': torch.tensor([2, 2])}
    seen = []

    def model(inp, scale):
        seen.append(scale)
        return inp
    pred, gt = forward_batch(model, batch, torch.device('cpu'), unit=True)
    assert torch.equal(pred, batch['inp']) and torch.equal(gt, batch['gt']) and seen == [2]
    pred, gt = forward_batch(model, batch, torch.device('cpu'))
    assert torch.allclose(pred, batch['inp'] * 2 - 1) and torch.allclose(gt, batch['gt'] * 2 - 1)
    cfg = load_config(write_config(tmp_path / 'u.yaml', data))
    cfg['model'] = {'name': 'EDSRIG', 'args': {'num_feat': 8, 'num_block': 1, 'implicit_dim': 8, 'latent_layers': 1}}
    for part in ('train_dataset', 'val_dataset'):
        cfg[part]['wrapper'] = {'name': 'sr-integer-downsampled', 'args': {'inp_size': 8, 'scales': [2]}}
    run = setup_run(cfg, str(tmp_path / 'u'), Dist(), Options(progress=False))
    try:
        assert run.unit
    finally:
        run.close()
