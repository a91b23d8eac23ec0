"""Training previews (issue 12): sampled as inference samples (the negative carries the null-identity twin, the
RealisID Guider), from a snapshot of the weights: the live training weights never reach ComfyUI's memory manager."""

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import pytest
import torch

from realisid import checkpoint
from realisid.control import FaceCondition, RealisIDControl
from realisid.guidance import RealisIDGuider
from realisid.null_identity import attach_with_null_twin
from realisid.train.data import collate, to_device
from realisid.train.loop import Trainer
from tests.helpers import train_synthetic

STEPS = 3


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    env = train_synthetic.training_env(tmp_path_factory.mktemp("previews"), people=4)
    out = tmp_path_factory.mktemp("previews_out")
    trainer = Trainer(train_synthetic.train_config(env, out, steps=2, ema=0.5, sample_steps=STEPS))
    trainer.fit()
    return trainer


def _cond(host, caption):
    cond, pooled = host.encode_caption(caption)
    return [[cond, {"width": 64, "height": 64, "pooled_output": pooled}]]


def _inference_image(trainer) -> torch.Tensor:
    """What a user gets from the exported file: the nodes' conditioning rule and the RealisID Guider at the node's
    defaults, sampled like SamplerCustomAdvanced (euler, normal, noise seed 0)."""
    host = trainer.host
    model = checkpoint.load_realisid(str(trainer.out / "realisid-final.safetensors"))  # the EMA weights
    batch = to_device(collate([trainer.dataset[0]]), "cpu")
    p_id = model.project(trainer._identity_source(batch))
    face = FaceCondition(p_id=p_id[0], landmark_hint=batch["hint"][0], box=tuple(batch["box"][0].tolist()))
    positive, negative = attach_with_null_twin(_cond(host, batch["caption"][0]), _cond(host, ""),
                                               RealisIDControl(model, [face]))
    guider = RealisIDGuider(host.patcher)
    guider.set_conds(positive, negative)
    guider.set_scales(text_scale=7.5, id_scale=5.0, id_delay=0.2)
    latent = torch.zeros(1, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(host.model_sampling, "normal", STEPS)
    out = guider.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"),
                        sigmas, disable_pbar=True, seed=0)
    return host.vae.decode(out)


def test_preview_equals_the_inference_sampling_of_the_exported_file(trainer):
    preview = trainer.sample_images(count=1, seed=0)
    reference = _inference_image(trainer)
    assert preview.shape == reference.shape == (1, 64, 64, 3)
    torch.testing.assert_close(preview, reference, atol=1e-5, rtol=1e-5)


def test_preview_negative_carries_the_null_identity_twin(trainer, monkeypatch):
    seen = []
    real = RealisIDGuider.set_conds
    monkeypatch.setattr(RealisIDGuider, "set_conds", lambda self, p, n: seen.append((p, n)) or real(self, p, n))
    trainer.sample_images(count=1)
    (positive, negative), = seen
    pos, neg = positive[0][1]["control"], negative[0][1]["control"]
    assert isinstance(pos, RealisIDControl) and pos.identity_enabled
    assert neg is not pos and not neg.identity_enabled and neg.identity_twin is pos


def test_previews_never_lend_the_live_weights_to_the_memory_manager(trainer, monkeypatch):
    loaded = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: loaded.extend(models) or real(models, *a, **k))
    live = {p.data_ptr() for p in trainer.model.nets.parameters()}
    before = {k: v.clone() for k, v in trainer.model.nets.state_dict().items()}
    trainer.sample_images(count=1)
    assert loaded  # the sampler did go through ComfyUI's memory manager
    for patcher in loaded:
        assert patcher.model is not trainer.model.nets
        assert not live & {p.data_ptr() for p in patcher.model.parameters()}
    # nothing of the preview stays registered with ComfyUI, and the trainer's side is as it was
    assert not [m for m in mm.current_loaded_models if m.model is not None and
                (m.model.is_clone(trainer.host.patcher) or isinstance(m.model.model, checkpoint.RealisIDNets))]
    for key, value in trainer.model.nets.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert trainer.model.nets.training and all(p.requires_grad for p in trainer.model.nets.parameters())
    assert not any(p.requires_grad for p in trainer.host.unet.parameters())
    assert next(trainer.host.unet.parameters()).device == trainer.accelerator.device
    loss, _ = trainer.compute_loss(trainer._batch(0), torch.Generator().manual_seed(0))  # training goes on
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
