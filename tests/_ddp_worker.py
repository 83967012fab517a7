"""Run by test_training.py under `torchrun --nproc_per_node=2`: a few DDP steps (gloo, CPU),
then each rank saves its parameters to OUT/rank{r}.pt; rank 0 also writes a checkpoint."""
import sys

import torch
import torch.distributed as dist

import scoresde as sd
from _training_setup import STEPS, make_trainer

out = sys.argv[1]
dist.init_process_group("gloo")
trainer = make_trainer(ckpt_dir=out)
assert trainer.world_size == 2
trainer.fit(STEPS)
torch.save(trainer.model.state_dict(), f"{out}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
