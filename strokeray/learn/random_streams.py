"""The random streams a training worker draws from, saved with a checkpoint and restored on resume.

A worker draws augmentation (and bag sampling) from its ``TaskSteps`` generator and dropout from
torch's global generator (CUDA's on a GPU). Both are seeded once, when the worker starts; a run
resumed from a checkpoint would seed them again and draw the later epochs' flips and dropout
masks from the start of the streams, so a ``--deterministic`` run that lost a worker would not end
where the uninterrupted run ends. Every rank's states travel to rank 0 with the epoch's metrics,
and it saves them beside the weights (``rank{r}.{stream}``, uint8 tensors: safetensors, nothing
unpickled on loading).
"""

from __future__ import annotations

import torch


def capture(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This worker's stream states: torch's global generator, ``generator`` and, on a GPU, CUDA's."""
    states = {"torch": torch.get_rng_state(), "steps": generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def by_rank(per_rank: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every rank's captured states (rank order, as gathered) in one dict keyed ``rank{r}.{stream}``."""
    return {f"rank{r}.{k}": v.cpu() for r, states in enumerate(per_rank) for k, v in states.items()}


def ranks_saved(states: dict[str, torch.Tensor]) -> int:
    """How many workers' streams ``states`` holds."""
    return len({key.split(".", 1)[0] for key in states})


def restore(states: dict[str, torch.Tensor], rank: int, world: int, generator: torch.Generator, device) -> bool:
    """Set this rank's streams from ``states``; False (nothing set) when they were saved by another
    number of workers, whose ranks drew other streams."""
    if not states or ranks_saved(states) != world:
        return False
    torch.set_rng_state(states[f"rank{rank}.torch"])
    generator.set_state(states[f"rank{rank}.steps"])
    if device.type == "cuda" and f"rank{rank}.cuda" in states:
        torch.cuda.set_rng_state(states[f"rank{rank}.cuda"], device)
    return True
