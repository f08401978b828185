"""labs/references.py against outside references: Hugging Face transformers' logits warpers and schedules."""
import pytest
import torch

from minimistral.labs import references
from minimistral.train import TrainConfig

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("min_p,temperature", [(0.1, 1.0), (0.05, 0.7), (0.3, 1.8), (1.0, 1.0), (0.0, 1.3)])
def test_min_p_logits_is_transformers_temperature_then_min_p(min_p, temperature):
    from transformers.generation.logits_process import MinPLogitsWarper, TemperatureLogitsWarper
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 300, generator=g) * torch.tensor([[0.3], [1.0], [2.0], [4.0], [8.0]])
    scores[1, 7] = scores[1].max()  # a tie for the favourite
    ours = references.min_p_logits(scores, min_p, temperature)
    hf = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if min_p > 0:
        hf = MinPLogitsWarper(min_p)(None, hf)
    assert torch.equal(ours.isinf(), hf.isinf())
    torch.testing.assert_close(ours[~ours.isinf()], hf[~hf.isinf()])
    assert 0 < int(ours.isfinite().sum()) <= scores.numel()


@pytest.mark.parametrize("steps,warmup,decay,min_lr", [(100, 10, 20, 0.0), (100, 10, 20, 1e-4), (50, 0, 10, 3e-4),
                                                       (30, 5, 1, 0.0), (30, 5, 0, 1e-4), (30, 5, 25, 0.0)])
def test_wsd_lr_is_transformers_wsd_one_step_later(steps, warmup, decay, min_lr):
    # transformers' get_wsd_schedule gives step k the factor our schedule gives step k - 1 (its step 0 is lr 0, ours
    # starts at lr / W); its warmup starts from min_lr where ours starts from 0, so they agree there when min_lr = 0
    from transformers.optimization import _get_wsd_scheduler_lambda
    cfg = TrainConfig(steps=steps, lr=1e-3, min_lr=min_lr, warmup_steps=warmup)
    for s in range(steps):
        hf = cfg.lr * _get_wsd_scheduler_lambda(s + 1, num_warmup_steps=warmup, num_stable_steps=steps - warmup - decay,
                                                num_decay_steps=decay, warmup_type="linear", decay_type="linear",
                                                min_lr_ratio=min_lr / cfg.lr, num_cycles=0.5)
        if (s >= warmup or min_lr == 0) and (decay or s + 1 < steps):  # decay 0: its step `steps` is past the end
            assert references.wsd_lr(s, cfg, decay) == pytest.approx(hf, rel=1e-12, abs=1e-15), s
    if decay:
        assert references.wsd_lr(steps - 1, cfg, decay) == pytest.approx(min_lr, abs=1e-15)
    with pytest.raises(ValueError, match="warmup_steps"):
        references.wsd_lr(0, cfg, steps - warmup + 1)
