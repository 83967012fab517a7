"""The run shared by the distributed test and its single-process reference."""
import torch

import scoresde as sd

STEPS = 6


def make_trainer(**kwargs):
    torch.manual_seed(0)
    mix = sd.data.GaussianMixture.ring(modes=4)
    x, labels = mix.sample(256, torch.Generator().manual_seed(0), return_components=True)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=32, depth=2, num_classes=4), sd.VPSDE(), prediction="v")
    return sd.Trainer(model, (x, labels), batch_size=32, lr=1e-2, warmup_steps=2, label_dropout=0.2,
                      t_sampling="importance", weighting="likelihood", seed=5, progress=False, **kwargs)
