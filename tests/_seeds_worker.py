"""Run by test_batch_invariance.py under `torchrun --nproc_per_node=2`: each rank samples its
shard of the rows with their own seeds (gloo, CPU); rank 0 saves the gathered batch to OUT."""
import sys

import torch
import torch.distributed as dist

import scoresde as sd
from scoresde._dist import Shards
from scoresde.data.problems import get_problem

out, seeds = sys.argv[1], list(range(200, 210))
torch.set_num_threads(1)
dist.init_process_group("gloo")
model = get_problem("gmm16d").score_model(sd.VPSDE())
shards = Shards(len(seeds))
results = {}
for solver in ("dpm++2m", "dpm++2m-sde", "adaptive-sde"):
    x = sd.sample(model, shape=(shards.hi - shards.lo, 16), solver=solver, seeds=seeds[shards.lo:shards.hi],
                  **({} if solver == "adaptive-sde" else {"steps": 6})).x
    results[solver] = shards.gather(x)
if shards.main:
    torch.save(results, f"{out}/sharded.pt")
dist.destroy_process_group()
