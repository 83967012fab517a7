"""Run by test_tuning.py under `torchrun --nproc_per_node=2`: teachers sharded over two gloo
ranks, once where every rank misses the cache, once where rank 0 hits and rank 1 misses (the
race of a rank that reads before rank 0 has written), once where both hit. Rank 0 saves what
it got to OUT/sharded.pt."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import scoresde as sd
from scoresde.data.problems import get_problem
from scoresde.tuning import teacher

out = Path(sys.argv[1])
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
model = get_problem("ring2d").score_model(sd.VPSDE())
x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
times = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
shared, alone = out / "shared", out / f"alone-{rank}"
first = teacher(model, x_T, times, cache_dir=shared)  # both miss; rank 0 writes
dist.barrier()
# rank 0 reads the file, rank 1 looks in an empty folder: both must solve again together
mixed = teacher(model, x_T, times, cache_dir=shared if rank == 0 else alone)
hit = teacher(model, x_T, times, cache_dir=shared)
if rank == 0:
    torch.save(dict(first=first.states, mixed=mixed.states, hit=hit.states,
                    cached=[first.cached, mixed.cached, hit.cached]), out / "sharded.pt")
dist.destroy_process_group()
