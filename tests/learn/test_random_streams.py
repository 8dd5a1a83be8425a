"""A worker's random streams, captured and restored (torch only, no Ray)."""

import torch

from strokeray.learn import random_streams

CPU = torch.device("cpu")


def _draws(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(4, generator=generator), torch.rand(4)  # the steps stream and torch's own


def test_restored_streams_draw_what_the_captured_ones_would_have():
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(7)
    _draws(g)  # an epoch's worth of drawing
    saved = random_streams.by_rank([random_streams.capture(g, CPU)])
    expected = _draws(g)
    torch.manual_seed(3)  # a restarted worker seeds afresh ...
    fresh = torch.Generator().manual_seed(7)
    assert random_streams.restore(saved, rank=0, world=1, generator=fresh, device=CPU)
    again = _draws(fresh)  # ... and, restored, goes on where the checkpoint left off
    assert all(torch.equal(a, b) for a, b in zip(again, expected))
    assert sorted(saved) == ["rank0.steps", "rank0.torch"] and random_streams.ranks_saved(saved) == 1


def test_streams_saved_by_another_number_of_workers_are_left_alone():
    g = torch.Generator().manual_seed(1)
    saved = random_streams.by_rank([random_streams.capture(g, CPU)])
    before = g.get_state()
    assert not random_streams.restore(saved, rank=0, world=2, generator=g, device=CPU)
    assert not random_streams.restore({}, rank=0, world=1, generator=g, device=CPU)
    assert torch.equal(g.get_state(), before)
