"""`python -m realisid.train fit` on tiny models: the loss falls, checkpoints load, the training forward equals
the ComfyUI control's, and a resumed run reproduces the uninterrupted one."""

import hashlib
import json

import comfy.model_sampling
import numpy as np
import pytest
import safetensors.numpy
import torch

from realisid import checkpoint
from realisid.control import FaceCondition, RealisIDControl
from realisid.identity_sources import clip_space, is_clip_space
from realisid.train.cli import main
from realisid.train.config import TrainConfig
from realisid.train.data import batch_indices
from realisid.train.loop import Trainer
from realisid.train.step import diffusion_loss, dropout_flags, model_targets
from tests.helpers import tiny_host_models as tiny
from tests.helpers import train_synthetic

PROJECTOR = train_synthetic.TINY_PROJECTOR


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("train"))


def _config(env, out, **kw):
    return train_synthetic.train_config(env, out, **kw)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    trainer = Trainer(_config(env, out, overfit=True))
    losses = trainer.fit()
    return trainer, losses, out


def test_loss_falls_when_fitting_one_batch(trained):
    _, losses, _ = trained
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1e-3
    assert losses[-1] < losses[0]


def test_saved_checkpoint_loads_with_the_trained_weights(trained, env):
    trainer, _, out = trained
    loaded = checkpoint.load_realisid(str(out / "realisid-final.safetensors"))
    assert is_clip_space(loaded.identity_space) and loaded.identity_space == clip_space(tiny.CLIP_VISION_HIDDEN, 257)
    assert loaded.crop_size == 4 and loaded.base_family == "sdxl"
    assert loaded.config["box_expand"] == 1.0 and loaded.config["hint"] == "landmarks68"  # what inference redraws
    vision = env[2]
    assert loaded.config["clip_vision"] == {"file": vision.name,
                                            "sha256": hashlib.sha256(vision.read_bytes()).hexdigest()}
    for key, value in trainer.model.nets.state_dict().items():
        assert torch.equal(loaded.nets.state_dict()[key], value.cpu()), key


def test_training_forward_equals_the_comfyui_control(trained):
    """RealisIDControl.get_control (the sampling path) gives the residuals the trainer trained on."""
    trainer, _, _ = trained
    host, model = trainer.host, trainer.model
    item = trainer.dataset[0]
    ms = host.model_sampling
    gen = torch.Generator().manual_seed(5)
    x_noisy = torch.randn(1, 4, 8, 8, generator=gen) * 3
    sigma = ms.sigmas[400:401].float()
    identity = host.encode_identity_clip(item["face_crop"][None])
    context, y = host.encode_captions([item["caption"]], (64, 64))
    hint = item["hint"].float() / 255  # what the step feeds the branches (data.to_device)
    with torch.no_grad():
        ours = trainer.forward_module(ms.calculate_input(sigma, x_noisy), ms.timestep(sigma).float(), identity,
                                      hint[None], item["box"][None], y, [False])
        face = FaceCondition(p_id=model.project(identity)[0], landmark_hint=hint, box=tuple(item["box"].tolist()))
        control = RealisIDControl(model, [face])
        control.pre_run(host.base, lambda p: ms.percent_to_sigma(p))
        theirs = control.get_control(x_noisy, sigma, {"y": y}, 1, {})
    for key in ("middle", "output"):
        assert len(ours[key]) == len(theirs[key]) > 0
        for a, b in zip(ours[key], theirs[key], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert max(t.abs().max() for t in ours["output"]) > 1e-4  # trained: the zero-convs are no longer zero


def test_checkpointed_unet_and_branches_give_the_same_loss_and_grads(trained):
    trainer, _, _ = trained
    batch = trainer._batch(0)

    def loss_and_grad(unet_ckpt: bool, branch_ckpt: bool):
        trainer.cfg.checkpoint_unet = unet_ckpt
        trainer.accelerator.unwrap_model(trainer.forward_module).checkpointed = branch_ckpt
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer.compute_loss(batch, torch.Generator().manual_seed(11))
        loss.backward()
        grad = trainer.model.local_net.input_blocks[1][0].in_layers[2].weight.grad.clone()
        trainer.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad

    try:
        plain, both = loss_and_grad(False, False), loss_and_grad(True, True)
    finally:
        trainer.cfg.checkpoint_unet = False
        trainer.accelerator.unwrap_model(trainer.forward_module).checkpointed = False
    torch.testing.assert_close(both[0], plain[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both[1], plain[1], atol=1e-6, rtol=1e-5)
    assert plain[1].abs().max() > 0


def test_sample_images_run_through_comfyui_sampling(trained):
    trainer, _, out = trained
    trainer.cfg.sample_steps = 2
    trainer.log_samples(7, count=1)
    import cv2

    png = cv2.imread(str(out / "samples" / "step0000007-0.png"))
    assert png is not None and png.shape == (64, 64, 3)
    assert trainer.model.nets.training and next(trainer.model.nets.parameters()).requires_grad


def test_resumed_run_reproduces_the_uninterrupted_losses(env, tmp_path):
    kw = dict(steps=4, save_every=2, drop_image=0.3, drop_text=0.3, drop_both=0.2, ema=0.9)
    full = Trainer(_config(env, tmp_path / "a", **kw)).fit()
    resumed = Trainer(_config(env, tmp_path / "b", resume=str(tmp_path / "a" / "state" / "step-0000002"), **kw)).fit()
    assert len(full) == 4 and len(resumed) == 2
    np.testing.assert_allclose(resumed, full[2:], rtol=0, atol=1e-6)
    a = checkpoint.load_realisid(str(tmp_path / "a" / "realisid-final.safetensors")).nets.state_dict()
    b = checkpoint.load_realisid(str(tmp_path / "b" / "realisid-final.safetensors")).nets.state_dict()
    for key in a:  # the EMA weights (the main file) match too
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert (tmp_path / "a" / "realisid-final-raw.safetensors").is_file()


def test_fit_cli_rejects_a_mismatched_identity_space(env, tmp_path, caplog):
    root, base, _ = env
    common = ["fit", "--base", str(base), "--cache", str(root / "cache"), "--out", str(tmp_path / "o"), "--cpu",
              "--steps", "1"]
    assert main([*common, "--identity-space", "clip"]) == 2
    assert "--clip-vision" in caplog.text
    assert main([*common, "--identity-space", "arcface"]) == 2
    assert "dlib-resnet-128" in caplog.text and "insightface" in caplog.text


def test_fit_cli_trains_saves_and_resumes_latest(env, tmp_path):
    root, base, _ = env
    out = tmp_path / "cli"
    common = ["fit", "--base", str(base), "--cache", str(root / "cache"), "--out", str(out), "--cpu",
              "--identity-space", "embedding", "--crop-size", "4", "--projector", json.dumps(PROJECTOR),
              "--batch-size", "1", "--save-every", "2", "--log-every", "1", "--lr", "1e-3", "--workers", "1"]
    assert main([*common, "--steps", "2"]) == 0
    assert (out / "state" / "latest").read_text() == "step-0000002"
    first = checkpoint.load_realisid(str(out / "realisid-step0000002.safetensors"))
    assert first.identity_space == "dlib-resnet-128"
    assert main([*common, "--steps", "4", "--resume", "latest"]) == 0
    assert (out / "state" / "latest").read_text() == "step-0000004"
    last = checkpoint.load_realisid(str(out / "realisid-final.safetensors"))
    key = "projector.proj_in.weight"
    assert not torch.equal(first.nets.state_dict()[key], last.nets.state_dict()[key])  # it trained on


def test_targets_follow_the_model_sampling_type():
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([0.5, 7.0])
    for kind in (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION):
        class Sampling(comfy.model_sampling.ModelSamplingDiscrete, kind):
            pass

        ms = Sampling()
        x = ms.noise_scaling(sigma, noise, x0)
        target = model_targets(ms, sigma, x, x0)
        s = sigma.view(-1, 1, 1, 1)
        expected = noise if kind is comfy.model_sampling.EPS else (noise - s * x0) / (s**2 + 1).sqrt()
        torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ms.calculate_denoised(sigma, target, x), x0, atol=1e-5, rtol=1e-5)


def test_face_loss_normalisation():
    pred, target = torch.zeros(2, 4, 4, 4), torch.ones(2, 4, 4, 4)
    target[1] *= 3.0
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :2] = 1  # 4 cells
    mask[1, :, :1, :1] = 1  # 1 cell
    loss, parts = diffusion_loss(pred, target, mask, 2.0, "area")
    assert parts["mse"].item() == pytest.approx(5.0)  # (1 + 9) / 2
    assert parts["face_mse"].item() == pytest.approx(5.0)  # per-sample means 1 and 9
    assert loss.item() == pytest.approx(15.0)
    _, parts = diffusion_loss(pred, target, mask, 1.0, "none")
    assert parts["face_mse"].item() == pytest.approx((16 * 1 + 4 * 9) / 128)


def test_batches_are_disjoint_across_ranks_and_cover_each_epoch():
    n, batch, world = 10, 2, 2
    seen = [batch_indices(n, 3, step, batch, rank, world) for step in range(3) for rank in range(world)]
    flat = [i for b in seen for i in b]
    assert sorted(flat[:n]) == list(range(n))  # the first epoch, split over 2 ranks, is a permutation
    assert batch_indices(n, 3, 1, batch, 0, world) == seen[2]  # a pure function of the step (resume)


def test_dropout_frequencies():
    cfg = TrainConfig(base="", cache="", out="", drop_image=0.1, drop_text=0.2, drop_both=0.3)
    image, text = dropout_flags(20000, cfg, torch.Generator().manual_seed(0))
    image, text = np.array(image), np.array(text)
    assert (image & text).mean() == pytest.approx(0.3, abs=0.015)
    assert (image & ~text).mean() == pytest.approx(0.1, abs=0.01)
    assert (text & ~image).mean() == pytest.approx(0.2, abs=0.015)


@pytest.mark.parametrize("variant", ["realisid", "instantid_style"])
def test_trained_checkpoint_runs_in_the_comfyui_nodes(request, variant, run_prompt, models_dir):
    """The trainer's file, as users get it, drives the bundled single-person workflow through ComfyUI (the
    InstantID-style baseline too: the Composite runs the branches a model has)."""
    import shutil

    from tests.helpers.host import REPO
    from tests.test_workflows import shrink_for_cpu

    out = request.getfixturevalue("trained")[2] if variant == "realisid" else request.getfixturevalue(variant)[1]
    shutil.copy(out / "realisid-final.safetensors", models_dir / "realisid" / "trained_tiny.safetensors")
    prompt = shrink_for_cpu(json.loads((REPO / "workflows" / "api" / "realisid_single_person.json").read_text()))
    loader = next(n for n in prompt.values() if n["class_type"] == "RealisIDModelLoader")
    loader["inputs"]["model_name"] = "trained_tiny.safetensors"
    result = run_prompt(prompt)
    saved = [img for ui in result.outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    assert len(saved) == 1


def test_logged_throughput_counts_only_the_steps_this_run_made():
    """A run resumed at step 1000 that made one step of 2 images in ~2 s reports ~1 img/s, not ~500."""
    import time
    from types import SimpleNamespace

    logged = {}
    trainer = object.__new__(Trainer)
    trainer.cfg = SimpleNamespace(log_every=1, batch_size=2, grad_accum=1, save_every=0, sample_every=0, val_every=0,
                                  val_sample_every=0, lr=1e-5)
    trainer.accelerator = SimpleNamespace(num_processes=1, is_main_process=False,
                                          log=lambda values, step: logged.update(values, step=step))
    trainer.progress = SimpleNamespace(step=1001)
    parts = {"mse": torch.tensor(0.5), "face_mse": torch.tensor(0.25)}
    trainer._after_step(1.0, parts, (time.perf_counter() - 2.0, 1000))
    assert logged["step"] == 1001
    assert logged["images_per_s"] == pytest.approx(1.0, rel=0.2)


@pytest.mark.parametrize("branches", ["local", "global"])
def test_one_branch_variants_train_and_save_without_the_other(env, tmp_path, branches):
    """The paper's ablations trained, not only switched off at inference: the saved model has one branch."""
    out = tmp_path / branches
    losses = Trainer(_config(env, out, steps=2, branches=branches)).fit()
    assert len(losses) == 2 and all(np.isfinite(losses))
    loaded = checkpoint.load_realisid(str(out / "realisid-final.safetensors"))
    assert (loaded.local_net is None) == (branches == "global")
    assert (loaded.global_net is None) == (branches == "local")
    assert (loaded.config["local"] is None) == (branches == "global")


def test_kps5_hint_variant_draws_the_five_keypoints_of_the_cached_landmarks(env, tmp_path):
    from realisid.faces.record import kps5_from_landmarks68
    from realisid.faces.render import render_kps5

    out = tmp_path / "kps5"
    trainer = Trainer(_config(env, out, steps=1, hint="kps5"))
    item = trainer.dataset[0]
    cache, row = trainer.dataset.rows[0]
    landmarks = safetensors.numpy.load_file(str(cache / row["file"]))["landmarks"]
    size = item["hint"].shape[-1]
    want = render_kps5(kps5_from_landmarks68(landmarks) * size, size)  # InstantID's drawing, in crop pixels
    np.testing.assert_allclose(item["hint"].permute(1, 2, 0).numpy() / 255.0, want, atol=1 / 255)
    landmark_hint = Trainer(_config(env, tmp_path / "lm68", steps=1)).dataset[0]["hint"]
    assert (item["hint"].float() - landmark_hint.float()).abs().max() > 100  # another drawing, not the 68 points
    trainer.fit()
    assert checkpoint.load_realisid(str(out / "realisid-final.safetensors")).config["hint"] == "kps5"


@pytest.fixture(scope="module")
def instantid_style(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("instantid_style")
    trainer = Trainer(_config(env, out, steps=1, branches="global", global_hint="face_hint", hint="kps5"))
    trainer.fit()
    return trainer, out


def test_instantid_style_variant_is_one_global_branch_reading_the_face_drawing(instantid_style):
    """The InstantID-style baseline (issue 14): no local branch, and a global branch whose hint is the face's
    5-keypoint drawing placed in its box on the whole image, so its residuals follow the drawing, not the box."""
    from realisid import geometry
    from realisid.control import branch_residuals, prepare_faces
    from tests.helpers.tiny_realisid import _fill, _keep_hint_scale

    trainer, out = instantid_style
    model = checkpoint.load_realisid(str(out / "realisid-final.safetensors"))
    assert model.local_net is None and model.config["local"] is None
    assert model.global_hint == "face_hint" and model.config["global"]["hint_channels"] == 3
    assert model.config["hint"] == "kps5"
    _fill(model.global_net, 7, unit_norms=True)  # random weights: one step leaves the zero-convs almost zero
    _keep_hint_scale(model.global_net.input_hint_block, 8)
    item = trainer.dataset[0]
    hint, box = item["hint"].float() / 255, tuple(item["box"].tolist())
    p_id = model.project(trainer.host.encode_identity_clip(item["face_crop"][None]))[0]
    prep = prepare_faces(model, [FaceCondition(p_id, hint, box)], (8, 8), "cpu", torch.float32, need_local=False)
    assert prep.global_hint.shape == (1, 3, 64, 64) and prep.local_hint is None
    outside = ~geometry.box_mask([box], 64, 64).bool().expand(-1, 3, -1, -1)
    assert prep.global_hint[outside].abs().max() < 0.5 < prep.global_hint.amax()  # the drawing, in its box
    _, y = trainer.host.encode_captions([item["caption"]], (64, 64))
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([500.0])

    def residuals(drawing):
        with torch.no_grad():
            res = branch_residuals(model, x, t, [FaceCondition(p_id, drawing, box)], y=y)
        return torch.cat([r.flatten() for r in res["output"]])

    drawn, mirrored = residuals(hint), residuals(hint.flip(-1))
    assert (drawn - mirrored).abs().max() > 1e-3 * drawn.abs().max() > 0


def test_a_face_hint_global_branch_needs_a_global_branch(env, tmp_path):
    with pytest.raises(ValueError, match="--global-hint needs a global branch"):
        _config(env, tmp_path, branches="local", global_hint="face_hint").validate()
