"""Checkpoints are data, never code (DESIGN.md): one digest over everything loaded, classes
from an allow-list, shapes checked before anything large is allocated, no pickle, and an
interrupted save that leaves the last good checkpoint and no debris behind."""
import copy
import hashlib
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.training import checkpoint as ckpt
from scoresde.training.checkpoint import CheckpointError, convert_legacy, load_checkpoint, seal, write_atomic
from _training_setup import make_trainer

TESTS = Path(__file__).parent


def small_trainer(**kwargs):
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1), sd.VPSDE(), prediction="eps")
    data = sd.data.GaussianMixture.ring().sample(64, torch.Generator().manual_seed(0))
    return sd.Trainer(model, data, batch_size=16, progress=False, **kwargs)


@pytest.fixture
def good(tmp_path):
    """A checkpoint of 2 steps of a tiny MLP, at tmp_path/run/checkpoint.pt."""
    trainer = small_trainer(ckpt_dir=tmp_path / "run")
    trainer.fit(2)
    return trainer.checkpoint_path


def resealed(path, out, edit):
    """A digest-valid checkpoint at `out`: `path`'s state, changed by `edit(state)`, sealed
    again (what someone who edits a file and recomputes its digest would write)."""
    state = load_checkpoint(path)
    body = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    edit(body)
    write_atomic(seal(body), out)
    return out


# ---- one changed byte anywhere ----------------------------------------------------------
def test_one_changed_byte_anywhere_is_refused(good, tmp_path):
    """400 bytes drawn from the header (its length, the tensor index, the JSON of config, step,
    data position, options, and the digest) and 100 from the tensors: each single-byte change is
    refused with a CheckpointError naming the file."""
    blob = good.read_bytes()
    header_end = 8 + int.from_bytes(blob[:8], "little")
    draw = random.Random(0)
    positions = list(range(8)) + draw.sample(range(8, header_end), 400) + draw.sample(range(header_end, len(blob)), 100)
    bad = tmp_path / "bad.pt"
    for pos in positions:
        flipped = bytearray(blob)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        assert str(bad) in str(err.value), pos
    assert load_checkpoint(good)["step"] == 2


@pytest.mark.parametrize("old, new, what", [
    (b'\\"step\\":2', b'\\"step\\":3', "the step"),
    (b'\\"beta_max\\":20.0', b'\\"beta_max\\":21.0', "a config value (the SDE)"),
    (b'\\"lr\\":0.0002', b'\\"lr\\":0.0003', "a Trainer option"),
    (b'\\"position\\":32', b'\\"position\\":33', "the data position"),
])
def test_an_edited_value_in_the_json_is_refused_by_the_digest(good, tmp_path, old, new, what):
    blob = good.read_bytes()
    assert blob.count(old) == 1, what
    bad = tmp_path / "edited.pt"
    bad.write_bytes(blob.replace(old, new))
    with pytest.raises(CheckpointError, match=r"edited.pt: is corrupted or was edited: the SHA-256 of its contents "
                                              r"must equal the stored digest [0-9a-f]{16}\.\.\.; got [0-9a-f]{16}"):
        load_checkpoint(bad)


def test_a_changed_tensor_value_is_refused(good, tmp_path):
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        weight = f.get_tensor("ema/net.inp.weight")
    blob = good.read_bytes()
    raw = weight.numpy().tobytes()
    assert blob.count(raw) >= 1
    at = blob.index(raw) + 5
    bad = tmp_path / "tensor.pt"
    bad.write_bytes(blob[:at] + bytes([blob[at] ^ 0x80]) + blob[at + 1:])
    with pytest.raises(CheckpointError, match="tensor.pt: is corrupted or was edited: the SHA-256 of its contents must equal"):
        sd.load_model(bad)


# ---- pickles are never read ------------------------------------------------------------
class Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "scoresde.Trainer", "payload": Payload(marker)}, protocol=2))
    zipped = tmp_path / "zipped.pt"  # the torch.save format of scoresde's checkpoints before safetensors
    torch.save({"format": "scoresde.Trainer", "version": 1, "payload": Payload(marker)}, zipped)
    assert not marker.exists()
    for path in (raw, zipped):
        for load in (load_checkpoint, sd.load_model, lambda p: sd.Trainer.from_checkpoint(p, torch.zeros(4, 2))):
            with pytest.raises(CheckpointError, match=f"{path.name}: is a torch.save \\(pickle\\) file, which scoresde "
                                                      "does not read .* convert it with .*convert_legacy"):
                load(path)
    with pytest.raises(CheckpointError, match="zipped.pt: cannot be read as a version-1 checkpoint"):
        convert_legacy(zipped, tmp_path / "converted.pt")  # weights_only=True refuses the payload too
    assert not marker.exists()
    assert not (tmp_path / "converted.pt").exists()


def legacy_digest(obj):
    """Version 1's digest (over tensors only), as scoresde 0.1 computed it."""
    h = hashlib.sha256()

    def visit(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                visit(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    visit(obj)
    return h.hexdigest()


def test_a_trusted_checkpoint_of_the_old_format_converts(good, tmp_path):
    state = load_checkpoint(good)
    old = {k: v for k, v in state.items() if k != "digest"}
    old["version"] = 1
    old["optimizer"] = {"state": old["optimizer"]["state"], "param_groups": old["optimizer"]["param_groups"]}
    old["config"] = copy.deepcopy(old["config"])
    old["config"]["model"]["sde"]["params"].update(T=1.0)  # version 1 stored derived attributes too
    old["digest"] = legacy_digest(old)
    legacy = tmp_path / "legacy.pt"
    torch.save(old, legacy)
    with pytest.raises(CheckpointError, match="legacy.pt: is a torch.save"):
        sd.load_model(legacy)
    new = convert_legacy(legacy, tmp_path / "new.pt")
    for a, b in zip(sd.load_model(new).state_dict().values(), sd.load_model(good).state_dict().values()):
        assert torch.equal(a, b)
    assert load_checkpoint(new)["step"] == 2


# ---- what the configuration may ask for -------------------------------------------------
def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def test_an_oversized_network_is_refused_before_allocating(good, tmp_path):
    """A digest-valid config for a 7.6e11-parameter MLP (3 TB in float32) is refused by the
    parameter cap, one for 1.3e9 parameters (5 GB) by the tensors present, which are those of a
    16-wide MLP, and one beyond the structural bounds before even a meta build: each in well
    under a second after warm-up, with no growth of the process's peak memory."""
    def net(**cfg):
        return lambda body: body["config"]["model"]["net"]["config"].update(cfg)

    huge = resealed(good, tmp_path / "huge.pt", net(dim=2**24, hidden=2**14, depth=256))
    big = resealed(good, tmp_path / "big.pt", net(hidden=2**14))
    absurd = resealed(good, tmp_path / "absurd.pt", net(hidden=10**6, depth=10**6))
    with pytest.raises(CheckpointError):
        load_checkpoint(huge)  # warm-up: the first meta build imports torch's meta kernels
    before, start = peak_rss_bytes(), time.perf_counter()
    for load in (load_checkpoint, sd.load_model):
        with pytest.raises(CheckpointError, match=r"huge.pt: is refused .*model.net.config must be a network of at most "
                                                  r"1e\+10 parameters; got MLP\(.*\) with 7.56e\+11 parameters"):
            load(huge)
        with pytest.raises(CheckpointError, match=r"big.pt: is refused .*model/net.blocks.0.emb.bias must be a float tensor "
                                                  r"of shape \(16384,\) \(the configured network MLP\); got F32 \(16,\)"):
            load(big)
        with pytest.raises(CheckpointError, match=r"absurd.pt: is refused .*model.net.config.hidden must be an integer "
                                                  r"in \[1, 16384\]; got 1000000"):
            load(absurd)
    assert time.perf_counter() - start < 5
    assert peak_rss_bytes() - before < 500 * 2**20
    with pytest.raises(ValueError, match="model.net.config must be a network of at most 1e\\+10 parameters"):
        ckpt.build_model(load_checkpoint(good)["config"]["model"] | {
            "net": {"class": "MLP", "config": {"dim": 2**24, "hidden": 2**14, "depth": 256}}})


def test_classes_come_from_the_allow_list(good, tmp_path):
    def rename(net=None, sde=None):
        def edit(body):
            model = body["config"]["model"]
            if net:
                model["net"]["class"] = net
            if sde:
                model["sde"]["class"] = sde
        return edit

    for name, edit in [("net.pt", rename(net="subprocess.Popen")), ("sde.pt", rename(sde="os.system"))]:
        path = resealed(good, tmp_path / name, edit)
        with pytest.raises(ValueError, match=r"is not built into scoresde \(SDEs: VPSDE, SubVPSDE, CosineVPSDE, VESDE, "
                                             r"EDMSDE; networks: MLP, UNet\); pass model= to Trainer.from_checkpoint"):
            sd.load_model(path)
    bad_param = resealed(good, tmp_path / "param.pt",
                         lambda body: body["config"]["model"]["sde"]["params"].update(__class__=1.0))
    with pytest.raises(CheckpointError, match=r"param.pt: is refused .*model.sde.params must be an object with keys "
                                              r"among beta_min, beta_max, T, t_eps; got keys"):
        load_checkpoint(bad_param)
    bad_value = resealed(good, tmp_path / "value.pt",
                         lambda body: body["config"]["model"]["sde"]["params"].update(beta_max="20"))
    with pytest.raises(CheckpointError, match=r"value.pt: is refused .*model.sde.params.beta_max must be a finite "
                                              r"number; got '20'"):
        load_checkpoint(bad_value)


def test_tensors_that_do_not_match_the_network_are_refused(good, tmp_path):
    def drop(body):
        body["ema"].pop("net.out.bias")

    def extra(body):
        body["model"]["net.extra"] = torch.zeros(3)

    for name, edit, match in [
        ("drop.pt", drop, r"ema tensors must be those of the configured network MLP; got missing net.out.bias"),
        ("extra.pt", extra, r"model tensors must be those of the configured network MLP; got unexpected net.extra"),
        ("step.pt", lambda body: body.update(step=-1), r"step must be an integer >= 0; got -1"),
        ("history.pt", lambda body: body.update(loss_history=torch.zeros(5, dtype=torch.float64)),
         r"loss_history must be float64 of shape \(n,\) with n <= step = 2; got F64 \(5,\)"),
    ]:
        path = resealed(good, tmp_path / name, edit)
        with pytest.raises(CheckpointError, match=f"{name}: is refused .*{match}"):
            load_checkpoint(path)


# ---- paths -------------------------------------------------------------------------------
def test_paths_that_are_not_checkpoints_give_clear_errors(good, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-100])
    for load in (load_checkpoint, sd.load_model):
        with pytest.raises(CheckpointError, match=f"checkpoint must be a checkpoint file written by Trainer; got the "
                                                  f"directory {good.parent} \\(did you mean {good}\\?\\)"):
            load(good.parent)
        with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
            load(tmp_path / "missing.pt")
        for path in (text, truncated):
            with pytest.raises(CheckpointError, match=f"checkpoint {path}: is corrupted, truncated or not a scoresde "
                                                      "checkpoint: it cannot be read as a safetensors file"):
                load(path)
        with pytest.raises(ValueError, match="path must be a checkpoint file path \\(a str or os.PathLike\\); got 3"):
            load(3)


# ---- interrupted saves -----------------------------------------------------------------
def test_leftover_temporary_files_are_removed_by_the_next_save_and_by_resume(good):
    trainer = small_trainer(ckpt_dir=good.parent)
    leftover = good.parent / f".{good.name}.x1y2z3.tmp"
    other = good.parent / "notes.tmp"  # not ours: kept
    leftover.write_bytes(b"half a checkpoint")
    other.write_bytes(b"")
    trainer.resume()
    assert not leftover.exists() and other.exists() and trainer.step == 2
    leftover.write_bytes(b"half a checkpoint")
    trainer.fit(3)
    assert not leftover.exists()
    assert sorted(os.listdir(good.parent)) == ["checkpoint.pt", "notes.tmp"]


KILLED_RUN = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
from _training_setup import make_trainer
trainer = make_trainer(ckpt_dir=sys.argv[1], ckpt_every=2)
trainer.fit(2)

def stall(fd):  # the next save has written its temporary file: stop here until killed
    print("saving", flush=True)
    time.sleep(120)

os.fsync = stall
trainer.fit(4)
"""


def test_kill_9_during_a_save_keeps_the_last_checkpoint_and_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path), str(TESTS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    path = tmp_path / "checkpoint.pt"
    leftovers = [p for p in os.listdir(tmp_path) if p != "checkpoint.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.pt.") and leftovers[0].endswith(".tmp")
    assert load_checkpoint(path)["step"] == 2

    straight = make_trainer()
    straight.fit(6)
    resumed = sd.Trainer.from_checkpoint(path, (straight.data.x, straight.data.y), progress=False)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # resume removed the killed save's temporary file
    resumed.fit(6)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert straight.loss_history == resumed.loss_history
    assert resumed.options == {**straight.options, "ckpt_every": 2}
