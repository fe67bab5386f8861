"""One rank of a two-process CPU run, launched by ``torchrun`` from test_distributed.py.

Run as ``torchrun --standalone --nproc_per_node 2 tests/engine/ddp_worker.py OUT MODE``, through
``tests._installed`` (the installed medens, and ``tests`` importable), where MODE is
``poison-rank1`` (rank 1's first batch is NaN) or ``raise-rank1`` (rank 1 fails at its second step).
Each rank saves its final weights and history to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from medens.engine import ResumableDistributedSampler, init_distributed
from tests.engine.helpers import images, mae_step, make_trainer


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("cpu", timeout_s=120)
    try:
        sampler = ResumableDistributedSampler(images(16), num_replicas=2, rank=1, seed=0, drop_last=True)
        sampler.set_epoch(0)
        first_batch_of_rank1 = tuple(list(sampler)[:2])
        data = images(16, poison=first_batch_of_rank1 if mode == "poison-rank1" else ())
        calls = {"n": 0}

        def step(model, batch):
            calls["n"] += 1
            if mode == "raise-rank1" and dist.rank == 1 and calls["n"] == 2:
                raise RuntimeError("rank 1 fails on purpose")
            return mae_step(model, batch)

        trainer, loader = make_trainer(out, data, epochs=2, batch_size=2, dist=dist, step_fn=step)
        trainer.fit(loader)
        torch.save(
            {"weights": trainer.module.state_dict(), "history": trainer.history}, out / f"rank{dist.rank}.pt"
        )
    finally:
        dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
