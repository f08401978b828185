"""labs/references.slot_positions (exercise 12.3) against the library's static rolling cache, driven by the model's
own compiled-path forward (`forward_at`, one token per step, position on the device) well past the window."""
import torch

import minimistral as mm
from minimistral.labs import references


def _static_run(window: int, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = mm.Transformer(mm.ModelArgs.tiny(n_layers=1, vocab_size=64, sliding_window=window)).eval()
    cache = model.new_cache(static=True)
    seen = []
    with torch.no_grad():
        for p in range(steps):
            model.forward_at(torch.tensor([[p % 60 + 3]]), torch.tensor([p]), cache)
            seen.append(cache.slot_positions.clone())
    return seen


def test_slot_positions_is_the_static_cache_after_each_decode_step():
    for window in (1, 4, 7):
        for p, held in enumerate(_static_run(window, 3 * window + 2)):
            torch.testing.assert_close(references.slot_positions(torch.tensor([p]), window), held[None])


def test_slot_positions_rows_are_independent_sequences():
    window = 5
    held = _static_run(window, 23)
    positions = torch.tensor([0, 4, 5, 22, 9])
    torch.testing.assert_close(references.slot_positions(positions, window),
                               torch.stack([held[p] for p in positions.tolist()]))


def test_slot_positions_can_fail():
    got = references.slot_positions(torch.tensor([6]), 4)
    assert got.tolist() == [[4, 5, 6, 3]]  # worked by hand: slots 0..3 hold 4, 5, 6 and 3 (7 would be the future)
    assert references.slot_positions(torch.tensor([1]), 4).tolist() == [[0, 1, -1, -1]]
