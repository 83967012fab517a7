"""Training: `Trainer` (denoising score matching, EMA, exact resumption, torchrun/DDP), its
checkpoints (`load_checkpoint`), and `load_model`, a trained ScoreModel from a checkpoint.

Modules by job: `data` (batches by index, the per-epoch order), `checkpoint` (configuration,
rebuild, the safetensors format with its digest, atomic writes, loading), `trainer` (the training
loop), `recipe` (a whole run from one `TrainConfig`: `train`, behind `scoresde train`).
"""
from .checkpoint import (CHECKPOINT_NAME, WEIGHTS, CheckpointError, build_model, convert_legacy, load_checkpoint,
                         load_model, model_config)
from .recipe import TrainConfig, train
from .trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "train", "load_checkpoint", "load_model", "build_model", "model_config",
           "convert_legacy", "CheckpointError", "CHECKPOINT_NAME", "WEIGHTS"]
