"""scoresde.unclip: captions and their attributes against their definitions, the tokenizer,
InfoNCE against its closed form, a tiny end-to-end chain (shapes, NFE per stage), stage files
round trip, and bad input refused in one line."""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.unclip import (CLIP, Captioner, RegressionPrior, Tokenizer, UnCLIP, all_captions, caption_index,
                             caption_text, clip_digest, decoder, diffusion_prior, held_out_combinations, info_nce,
                             ink_mass, load_clip, load_regression_prior, load_stage, parse_caption,
                             retrieval_recall, save_clip, save_regression_prior, slant, train_stage)
from scoresde.unclip.captions import VOCABULARY

torch.set_num_threads(1)


def bar(width: int, shear: float = 0.0) -> torch.Tensor:
    """A vertical bar (1, 1, 8, 8) in [-1, 1], `width` pixels wide, its column shifted by
    shear * (3.5 - row): shear > 0 leans the top to the right."""
    x = -torch.ones(1, 1, 8, 8)
    for r in range(8):
        c0 = int(round(3 + shear * (3.5 - r)))
        x[0, 0, r, max(c0, 0):min(c0 + width, 8)] = 1.0
    return x


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ---- attributes and captions ------------------------------------------------------------------
def test_attributes_match_their_definitions_on_synthetic_images():
    thin, thick = bar(1), bar(3)
    assert ink_mass(thin).item() == pytest.approx(8 / 64)
    assert ink_mass(thick).item() == pytest.approx(24 / 64)
    assert slant(thin).item() == pytest.approx(0.0, abs=1e-12)
    # an exact shear: columns c = 3 + s (3.5 - r) for r = 0..7 in a 1-pixel line with integer steps (s = 1)
    right, left = bar(1, shear=1.0), bar(1, shear=-1.0)
    x = right[0, 0].clamp(min=0).nonzero().double()  # (row, col) of the ink
    cov = ((x[:, 0] - x[:, 0].mean()) * (x[:, 1] - x[:, 1].mean())).mean()
    assert slant(right).item() == pytest.approx(float(-cov / x[:, 0].var(unbiased=False)))
    assert slant(right).item() > 0.5 and slant(left).item() < -0.5
    assert slant(-torch.ones(1, 1, 8, 8)).item() == 0.0  # a blank page is upright


def test_captions_follow_the_thresholds_and_are_deterministic():
    th = {"weight": torch.tensor([[0.2, 0.3]] * 10, dtype=torch.float64),
          "slant": torch.tensor([[-0.2, 0.2]] * 10, dtype=torch.float64)}
    cap = Captioner(th)
    x = torch.cat([bar(1), bar(3), bar(2, shear=1.0), bar(2, shear=-1.0)])
    labels = torch.tensor([1, 1, 7, 4])
    assert cap.captions(x, labels) == ["a thin one", "a thick one", "a seven slanted right", "a four slanted left"]
    assert Captioner.from_json(cap.to_json()).captions(x, labels) == cap.captions(x, labels)
    xs, ys = sd.data.load_digits("test")
    a, b = Captioner.fit(xs, ys), Captioner.fit(xs, ys)
    assert a.captions(xs, ys) == b.captions(xs, ys)
    for name in ("weight", "slant"):  # terciles: each level holds about a third of every digit
        counts = torch.bincount(a.levels(xs, ys)[name], minlength=3).double() / len(ys)
        assert torch.all((counts - 1 / 3).abs() < 0.05), counts


def test_caption_text_parses_back_and_held_out_combinations_are_fixed():
    caps = all_captions()
    assert len(set(caps)) == 90 and caps[caption_index("a thin seven slanted right")] == "a thin seven slanted right"
    assert all(caption_text(*parse_caption(c)) == c for c in caps)
    held = held_out_combinations()
    assert [h[0] for h in held] == list(range(10)) and all(h[1:] != (1, 1) for h in held)
    assert held == held_out_combinations()


def test_tokenizer_round_trip_and_refusals():
    tok = Tokenizer()
    caps = all_captions()
    ids = tok.encode(caps)
    assert ids.shape == (90, 5) and ids.dtype == torch.long
    assert tok.decode(ids) == caps
    assert tok.decode(tok.encode(["A  Thin SEVEN"])) == ["a thin seven"]
    with pytest.raises(ValueError, match="unknown: purple, twelve") as err:
        tok.encode(["a purple twelve"])
    one_line(err)
    with pytest.raises(ValueError, match="non-empty caption") as err:
        tok.encode(["   "])
    one_line(err)
    with pytest.raises(ValueError, match="non-empty list"):
        tok.encode("a seven")
    with pytest.raises(ValueError, match="at most 5 words"):
        tok.encode(["a thin thick seven slanted left"])


# ---- CLIP -------------------------------------------------------------------------------------
def test_info_nce_closed_form_and_groups():
    b, s = 6, 5.0
    e = torch.eye(b)
    # aligned orthonormal pairs: each row's logits are s on the diagonal, 0 elsewhere
    assert info_nce(e, e, torch.tensor(s)).item() == pytest.approx(math.log(1 + (b - 1) * math.exp(-s)), rel=1e-6)
    # two rows of one caption: the target is split between them
    img = torch.eye(b)
    txt = torch.eye(b)
    txt[1] = txt[0]
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    logits = s * img @ txt.T
    target = (groups[:, None] == groups[None, :]).double()
    target /= target.sum(1, keepdim=True)
    expect = (-(target * logits.double().log_softmax(1)).sum(1).mean() - (target * logits.T.double().log_softmax(1)).sum(1).mean()) / 2
    assert info_nce(img, txt, torch.tensor(s), groups).item() == pytest.approx(expect.item(), rel=1e-6)
    # a random pairing scores worse than the aligned one
    perm = torch.randn(b, b, generator=torch.Generator().manual_seed(0))
    assert info_nce(e, torch.nn.functional.normalize(perm, dim=1), torch.tensor(s)) > info_nce(e, e, torch.tensor(s))


def tiny_clip(seed: int = 0, embed_dim: int = 8) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(VOCABULARY, 5, embed_dim=embed_dim, width=4, hidden=16).eval().requires_grad_(False)


def test_retrieval_chance_and_a_perfect_model():
    clip = tiny_clip()
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    caps = [caption_text(d % 3, 1, 1) for d in range(12)]
    r = retrieval_recall(clip, x, caps, ks=(1, 5))
    assert r["caption_chance@1"] == pytest.approx(4 / 12)
    assert r["caption_chance@5"] == pytest.approx(1 - math.comb(8, 5) / math.comb(12, 5))
    assert r["pair_chance@5"] == pytest.approx(5 / 12)
    assert 0 <= r["caption_recall@1"] <= r["caption_recall@5"] <= 1


def test_clip_file_round_trip_and_refusals(tmp_path):
    clip = tiny_clip()
    path = save_clip(clip, tmp_path / "clip.safetensors")
    again = load_clip(path)
    assert clip_digest(again) == clip_digest(clip)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(again.encode_image(x), clip.encode_image(x))
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped weight byte
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted or was edited") as err:
        load_clip(tmp_path / "bad.safetensors")
    one_line(err)
    with pytest.raises(ValueError, match="images of shape"):
        clip.encode_image(torch.zeros(2, 1, 4, 4))


# ---- the chain --------------------------------------------------------------------------------
def test_tiny_pipeline_end_to_end_shapes_nfe_and_stage_files(tmp_path):
    d = 8
    clip = tiny_clip(embed_dim=d)
    x, y = sd.data.load_digits("test")
    x, y = x[:32], y[:32]
    caps = [caption_text(int(label), 1, 1) for label in y]
    with torch.no_grad():
        z, c = clip.encode_image(x), clip.encode_text(caps)
    options = dict(batch_size=16, lr=1e-3, warmup_steps=1, progress=False, cond_dropout=0.2, seed=0)
    torch.manual_seed(0)
    prior_tr = train_stage(diffusion_prior(d, hidden=16, depth=1), z * math.sqrt(d), c, 3, tmp_path / "prior",
                           "prior", "text_embedding", clip, **options)
    torch.manual_seed(0)
    dec_tr = train_stage(decoder(d, base_channels=8), x, z, 2, tmp_path / "decoder", "decoder", "image_embedding",
                         clip, **options)
    pipe = UnCLIP(clip, dec_tr.ema_model, prior_tr.ema_model)
    out = pipe.generate(["a seven", "a thin two slanted left", "a one"], prior_steps=3, prior_scale=2.0,
                        decoder_steps=4, decoder_scale=1.5, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 1, 8, 8) and out.image_embedding.shape == (3, d)
    assert torch.allclose(out.image_embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    assert out.nfe == {"prior": 3 + 1, "decoder": 4 + 1}  # dpm++2m: one evaluation a step, + the final denoise
    again = pipe.generate(["a seven", "a thin two slanted left", "a one"], prior_steps=3, prior_scale=2.0,
                          decoder_steps=4, decoder_scale=1.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.x, again.x)
    assert pipe.variations(x[:2], 3, steps=2).shape == (2, 3, 1, 8, 8)
    assert pipe.interpolate(x[:1], x[1:2], points=4, steps=2).shape == (4, 1, 8, 8)

    # stages round trip: loaded from their folders they give the same chain
    loaded = UnCLIP.load(clip, tmp_path / "decoder", tmp_path / "prior")
    same = loaded.generate(["a seven", "a thin two slanted left", "a one"], prior_steps=3, prior_scale=2.0,
                           decoder_steps=4, decoder_scale=1.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same.x, out.x, atol=1e-5)
    # and training resumes from the checkpoint exactly where it stopped
    resumed = train_stage(diffusion_prior(d, hidden=16, depth=1), z * math.sqrt(d), c, 5, tmp_path / "prior",
                          "prior", "text_embedding", clip, **options)
    assert resumed.step == 5 and resumed.loss_history[:3] == prior_tr.loss_history

    # a regression prior and no prior (a decoder on text embeddings)
    reg = RegressionPrior(d, hidden=16).eval()
    save_regression_prior(reg, clip, tmp_path / "reg.safetensors")
    reg_pipe = UnCLIP.load(clip, tmp_path / "decoder", tmp_path / "reg.safetensors")
    r = reg_pipe.generate(["a seven"], decoder_steps=2)
    assert r.nfe == {"prior": 0, "decoder": 3}
    text_dec = UnCLIP(clip, dec_tr.ema_model, None, decoder_condition="text_embedding")
    assert text_dec.generate(["a seven"], decoder_steps=2).image_embedding is None

    # bad input: one-line errors
    other = tiny_clip(seed=1, embed_dim=d)
    with pytest.raises(ValueError, match="another CLIP model") as err:
        load_stage(tmp_path / "prior", other, "prior")
    one_line(err)
    with pytest.raises(ValueError, match="another CLIP model"):
        load_regression_prior(tmp_path / "reg.safetensors", other)
    with pytest.raises(ValueError, match=r"embedding width \(cond_dim\) is 8 but the CLIP model's embeddings have width 6") as err:
        load_stage(tmp_path / "decoder", tiny_clip(embed_dim=6), "decoder")
    one_line(err)
    with pytest.raises(ValueError, match=r"width \(cond_dim\) is 8 but .* width 6"):
        UnCLIP(tiny_clip(embed_dim=6), dec_tr.ema_model)
    with pytest.raises(ValueError, match="unknown: purple") as err:
        pipe.generate(["a purple seven"])
    one_line(err)
    with pytest.raises(ValueError, match="non-empty caption") as err:
        pipe.generate([""])
    one_line(err)
    with pytest.raises(ValueError, match=r"embeddings \(B, 8\)") as err:
        pipe.decode(torch.zeros(2, 5))
    one_line(err)
    with pytest.raises(ValueError, match="needs a prior"):
        UnCLIP(clip, dec_tr.ema_model, None, decoder_condition="image_embedding")


def test_the_unclip_command_refuses_a_caption_it_cannot_read_before_any_training(tmp_path, capsys, monkeypatch):
    import scoresde.unclip as unclip
    from scoresde.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the bad caption was refused")

    monkeypatch.setattr(unclip, "train_unclip", no_training)
    assert main(["unclip", "--quick", "--caption", "a purple seven", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "caption must be of the form" in err[0] and "a purple seven" in err[0]
    assert main(["unclip", "--quick", "--decoder-scale", "-1", "--out", str(tmp_path)]) == 2
    assert "--decoder-scale must be" in capsys.readouterr().err
