"""RealisID-Mini training plumbing: exact resume, detector target geometry, face crops."""

import json
import math

import numpy as np
import pytest
import torch

from realisid.mini import crops, facenets, training, world


def _toy_run(work, steps_per_call):
    """A linear model fit on batches drawn from step_rng; returns its weights after all calls."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.tensor([[1.0, -2.0, 0.5]])

    def step_fn(step):
        x = torch.from_numpy(training.step_rng(4, step).normal(size=(8, 3))).float()
        loss = (model(x) - x @ target.T).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    total = 0
    for n in steps_per_call:
        total += n
        run = training.ResumableRun(work, "toy", model, optimizer, seed=4)  # a fresh process would do this
        run.run(total, step_fn, save_every=2, lr_at=training.warmup_cosine(1e-2, 2, 6))
    return model.weight.detach().clone(), run


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight, _ = _toy_run(tmp_path / "a", [6])
    resumed, run = _toy_run(tmp_path / "b", [4, 2])
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)
    assert run.step == 6 and run.record()["steps"] == 6
    state = torch.load(run.state_path, weights_only=True)  # no pickled objects in a state file
    assert all(type(g["lr"]) is float for g in state["optimizer"]["param_groups"])


def test_resume_refuses_another_seed(tmp_path):
    _toy_run(tmp_path, [2])
    model = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="seed"):
        training.ResumableRun(tmp_path, "toy", model, torch.optim.Adam(model.parameters()), seed=5)


def test_detector_targets_decode_back_to_the_true_boxes():
    """A perfect detector output (the targets themselves) decodes to every true face box."""
    scenes = [world.random_scene(s) for s in range(12)]
    target = facenets.detector_targets(scenes)
    heat = target["heat"].clamp(1e-6, 1 - 1e-6)
    out = torch.cat([torch.log(heat / (1 - heat))[:, None], target["reg"]], dim=1)
    decoded = facenets.decode_detections(out, threshold=0.99)
    for scene, found in zip(scenes, decoded, strict=True):
        assert len(found) == len(scene.faces)
        for face in scene.faces:
            best = min(found, key=lambda bs: np.abs(bs[0] - face.box).max())
            np.testing.assert_allclose(best[0], face.box, atol=1e-3)


def test_crop_units_round_trip_and_pixel_position():
    box = np.array([40.0, 60.0, 88.0, 108.0])
    points = np.array([[50.5, 70.25], [64.0, 84.0]])
    np.testing.assert_allclose(crops.from_crop_units(crops.to_crop_units(points, box), box), points)
    # the box centre lands at the crop centre, a box corner at (1 - 1/EXPAND) / 2 of the crop
    assert crops.to_crop_units([[64.0, 84.0]], box)[0] == pytest.approx([0.5, 0.5])
    margin = (1 - 1 / crops.EXPAND) / 2
    assert crops.to_crop_units([[40.0, 60.0]], box)[0] == pytest.approx([margin, margin])
    image = np.zeros((160, 160, 3), np.uint8)
    image[82:86, 62:66] = 255  # a bright square at the box centre
    crop = crops.crop(image, box)
    ys, xs = np.nonzero(crop[..., 0] > 60)
    assert abs(xs.mean() + 0.5 - crops.CROP / 2) < 0.75 and abs(ys.mean() + 0.5 - crops.CROP / 2) < 0.75


def test_warmup_cosine_schedule():
    lr = training.warmup_cosine(1.0, 10, 110, floor=0.1)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)


def test_warmup_constant_schedule_can_be_extended():
    """The VAE's schedule depends on the step only (not the planned total), so a longer run is the same run."""
    lr = training.warmup_constant(2.0, 4)
    assert [lr(s) for s in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert type(lr(0)) is float


def test_ema_update_warms_up_then_follows_the_decay():
    live, ema = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        live.weight.fill_(1.0)
        ema.weight.zero_()
    training.update_ema(live, ema, step=0, decay=0.999)  # d = 1/10: the first update moves 90 % of the way
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.9))
    training.update_ema(live, ema, step=10_000, decay=0.999)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.9 + 0.1 * 0.001))


def test_vae_blocks_start_as_the_identity(pack_node_ids):
    """SkipInit: every TAESD block of a fresh Mini VAE passes its (non-negative) input through unchanged."""
    import comfy.taesd.taesd

    from realisid.mini import family, vae

    model = vae.build_taesd(3)
    blocks = [m for m in model.modules() if isinstance(m, comfy.taesd.taesd.Block)]
    assert len(blocks) == 20  # TAESD: 10 blocks in the encoder, 10 in the decoder
    x = torch.rand(1, 64, 8, 8)
    for block in blocks:
        torch.testing.assert_close(block(x), x)
    assert model.taesd_encoder(torch.rand(1, 3, 64, 64)).shape == (1, family.LATENT_CHANNELS, 8, 8)


def test_vae_patches_are_mostly_faces():
    from realisid.mini import vae

    pool = vae.ScenePool(seed=0, index=0, size=6)
    x, w, boxes = vae.sample_patches(pool, np.random.default_rng(1), batch=8, patch=64)
    assert x.shape == (8, 3, 64, 64) and w.shape == (8, 1, 64, 64) and boxes.shape == (8, 4)
    face_patches = [bool((w[i] > 1).any()) for i in range(8)]
    assert sum(face_patches[i] for i in range(8) if i % 4 < vae.FACE_PATCHES) == 2 * vae.FACE_PATCHES
    assert [bool(torch.isnan(boxes[i, 0])) for i in range(8)] == [i % 4 >= vae.FACE_PATCHES for i in range(8)]
    for i in range(8):  # a face patch's box is its face's, in patch pixels: the face is inside the patch
        if not torch.isnan(boxes[i, 0]):
            centre = (boxes[i, :2] + boxes[i, 2:]) / 2
            assert bool(((centre > -1) & (centre < 65)).all())


@pytest.mark.parametrize("seed", [5, 11, 12, 13])
def test_differentiable_face_crops_match_the_networks_crops(pack_node_ids, seed):
    """The VAE's identity loss crops faces where every Mini face network does (crops.crop is the reference).

    The kernels differ (bilinear here, 2x bilinear then area there): measured interior mean difference 1.7 to 4.0
    of 255 on these seeds, against 3.3 to 9.0 with the box shifted by half a pixel; shifted by 2 px, much more."""
    from realisid.mini import vae

    scene = world.random_scene(seed, n_people=1)
    image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255
    reference = crops.crop(scene.image, scene.faces[0].box).astype(np.float32)

    def difference(shift: float) -> float:
        box = scene.faces[0].box + np.array([shift, shift, shift, shift])
        ours = vae.face_crops(image, torch.tensor(box[None]).float())[0].permute(1, 2, 0).numpy() * 255
        return float(np.abs(ours - reference)[2:-2, 2:-2].mean())

    assert difference(0.0) < 5.0
    assert difference(2.0) > 1.5 * difference(0.0)


def test_identity_loss_is_zero_for_a_perfect_reconstruction_and_grows_with_damage(pack_node_ids):
    from realisid.mini import vae

    torch.manual_seed(0)
    net = facenets.FaceNet().eval().requires_grad_(False)
    pool = vae.ScenePool(seed=0, index=0, size=4)
    x, _, boxes = vae.sample_patches(pool, np.random.default_rng(2), batch=4, patch=64)
    keep = ~torch.isnan(boxes[:, 0])
    x, boxes = x[keep], boxes[keep]
    assert float(vae.identity_loss(net, x, x, boxes)) == pytest.approx(0.0, abs=1e-5)
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert 0 < float(vae.identity_loss(net, x, blurred, boxes)) < float(vae.identity_loss(net, x, noisy, boxes))


def test_crop_trunk_features_are_the_forward_pass():
    """The identity loss reads the face net through with_features + heads: the same numbers as its forward."""
    torch.manual_seed(0)
    net = facenets.FaceNet().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        flat, kept = net.crop_net.with_features(x, (1, 7))
        direct = net(x)
        via_heads = net.heads(flat)
    assert [f.shape[1:] for f in kept] == [(32, 64, 64), (128, 8, 8)]
    for key in ("box", "landmarks", "embedding"):
        torch.testing.assert_close(via_heads[key], direct[key], rtol=0, atol=0)


def _small_vae_work(work, monkeypatch) -> None:
    """A random face net for the VAE's identity loss (the shipped one is not needed) and 3-scene pools."""
    from realisid.mini import vae

    small_pool = vae.ScenePool
    monkeypatch.setattr(vae, "ScenePool", lambda seed, index: small_pool(seed, index, size=3))
    torch.manual_seed(0)
    random_net = facenets.FaceNet().eval().requires_grad_(False)
    monkeypatch.setattr(vae, "load_facenet", lambda: random_net)


def test_vae_decoder_stage_keeps_the_latent_space(tmp_path, monkeypatch, pack_node_ids):
    """Stage 2 trains the decoder alone: the exported encoder is stage 1's, bit for bit, so latents the base was
    trained on stay valid; stage 1 cannot be extended once stage 2 exists."""
    from realisid.mini import cli, vae

    _small_vae_work(tmp_path, monkeypatch)
    vae.train(str(tmp_path), steps=2, batch=2, patch=32)
    joint = vae.joint_stage_model(str(tmp_path))
    vae.train_decoder(str(tmp_path), steps=3, batch=2, patch=32)

    exported, records = cli._vae_for_export(str(tmp_path), seed=0)
    assert set(records) == {"vae", "vae-decoder"} and records["vae-decoder"]["steps"] == 3
    for (name, a), b in zip(joint.taesd_encoder.state_dict().items(), exported.taesd_encoder.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    moved = [not torch.equal(a, b) for a, b in zip(joint.taesd_decoder.state_dict().values(),
                                                    exported.taesd_decoder.state_dict().values(), strict=True)]
    assert any(moved)
    images = np.stack([world.random_scene(5).image[:64, :64]])
    torch.testing.assert_close(vae.encode(exported, images), vae.encode(joint, images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="decoder stage has started"):
        vae.train(str(tmp_path), steps=4, batch=2, patch=32)


def _trained_base_work(work, monkeypatch) -> None:
    """A --work folder with a 2-step base on 4 random latents, and a 1-step VAE exported as the shipped one (to a
    temporary models folder)."""
    from realisid.mini import base, cli, family, files, vae

    _small_vae_work(work, monkeypatch)
    monkeypatch.setattr(files, "VAE_DIR", work / "shipped_vae")
    vae.train(str(work), steps=1, batch=2, patch=32)
    cli._export("vae", str(work), 0)
    (work / "shards").mkdir()
    torch.save({"latents": torch.randn(4, family.LATENT_CHANNELS, 32, 32).half(),
                "captions": ["one person, close-up portrait, in a park, wearing a red shirt"] * 4, "seeds": [0] * 4},
               work / "shards" / "shard_0000.pt")
    base.train(str(work), str(work / "shards"), steps=2, batch=2)


def test_base_export_is_the_ema_read_back_by_comfyuis_loader(tmp_path, monkeypatch, pack_node_ids):
    """`export base`: the EMA UNet and text encoders and the shipped VAE in one checkpoint that the stock loader
    detects as the Mini family (the base stage's latents come from that VAE's encoder)."""
    import comfy.model_sampling
    import comfy.sd

    from realisid.mini import cli, family

    _trained_base_work(tmp_path, monkeypatch)
    path = tmp_path / "mini_base.safetensors"
    cli._export_base(str(tmp_path), 0, path)
    family.register()
    patcher, _clip, vae_model = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    assert type(patcher.model.model_config) is family.MiniSDXL
    assert isinstance(patcher.model.model_sampling, comfy.model_sampling.V_PREDICTION)  # from the "v_pred" key
    state = torch.load(tmp_path / "base.state.pt", map_location="cpu", weights_only=True)["model"]
    loaded = patcher.model.diffusion_model.state_dict()
    for key in ("input_blocks.0.0.weight", "out.2.weight"):
        torch.testing.assert_close(loaded[key].float(), state[f"ema_unet.{key}"].half().float())
    key = "input_blocks.0.0.weight"  # the EMA, not the live weights: after two steps the two differ
    assert not torch.equal(state[f"ema_unet.{key}"], state[f"unet.{key}"])
    shipped = cli._load_vae()
    decoder = vae_model.first_stage_model.taesd_decoder.state_dict()
    for key, value in shipped.taesd_decoder.state_dict().items():
        torch.testing.assert_close(decoder[key].float(), value.float())


def test_base_warm_start_continues_a_committed_checkpoint(tmp_path, monkeypatch, pack_node_ids):
    """`train base --init CKPT` in a new --work folder: both copies start from the checkpoint's (EMA) weights and
    the next export keeps the stage it continued, then its own (the card's training table)."""
    import safetensors

    from realisid.mini import base, card, cli

    _trained_base_work(tmp_path, monkeypatch)
    first = tmp_path / "first.safetensors"
    cli._export_base(str(tmp_path), 0, first)
    source = torch.load(tmp_path / "base.state.pt", map_location="cpu", weights_only=True)["model"]

    nets = base.BaseNets(*base.build(seed=3))  # another init: every weight differs from the checkpoint's
    key = "input_blocks.1.0.in_layers.2.weight"
    assert not torch.equal(nets.unet.state_dict()[key], source[f"ema_unet.{key}"])
    base.load_checkpoint_weights(nets, str(first))
    for copy in (nets.unet, nets.ema_unet):
        torch.testing.assert_close(copy.state_dict()[key], source[f"ema_unet.{key}"].half().float())
    text_key = "clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    for copy in (nets.clip, nets.ema_clip):
        torch.testing.assert_close(copy.state_dict()[text_key], source[f"ema_clip.{text_key}"].half().float())

    second_work = tmp_path / "second"
    (second_work).mkdir()
    (second_work / "shards").symlink_to(tmp_path / "shards")
    base.train(str(second_work), str(second_work / "shards"), steps=1, batch=2, seed=1, init=str(first))
    second = tmp_path / "second.safetensors"
    cli._export_base(str(second_work), 1, second)
    with safetensors.safe_open(str(second), framework="pt") as f:
        training = json.loads(f.metadata()["realisid_mini"])["training"]
    assert list(training)[-2:] == ["base", "base stage 2"]  # the stage it continued, then its own
    assert training["base"]["steps"] == 2
    assert training["base stage 2"]["steps"] == 1 and training["base stage 2"]["from"] == "first.safetensors"
    rows = card._training_rows({"training": training})
    assert [r.split(" | ")[:2] for r in rows[-2:]] == [["| base", "2"], ["| base stage 2", "1"]]
    with pytest.raises(ValueError, match="not a Mini base checkpoint"):
        base.load_checkpoint_weights(base.BaseNets(*base.build(seed=3)), str(tmp_path / "shipped_vae" / "mini_vae.safetensors"))


def test_base_cosine_stage_decays_its_lr_and_refuses_another_schedule_on_resume(tmp_path, monkeypatch,
                                                                               pack_node_ids):
    """`train base --lr-schedule cosine`: the optimizer's rate follows warm-up then a cosine to 0.1 x lr at
    --steps; the schedule is fixed when the stage starts (a resume with other --steps or a constant schedule is
    refused, the state untouched) and the export records it."""
    import safetensors

    from realisid.mini import base, cli

    _trained_base_work(tmp_path, monkeypatch)
    first = tmp_path / "first.safetensors"
    cli._export_base(str(tmp_path), 0, first)
    monkeypatch.setattr(base, "WARMUP_STEPS", 1)
    work = tmp_path / "cosine"
    work.mkdir()
    (work / "shards").symlink_to(tmp_path / "shards")
    base.train(str(work), str(work / "shards"), steps=3, batch=2, lr=3e-4, init=str(first), lr_schedule="cosine")
    state = torch.load(work / "base.state.pt", map_location="cpu", weights_only=True)
    # step 2 of 3 with one warm-up step is halfway down the cosine: 3e-4 * (0.1 + 0.9 * (1 + cos(pi / 2)) / 2)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.65e-4, rel=1e-9)
    before = (work / "base.state.pt").read_bytes()
    for steps, schedule in ((5, "cosine"), (3, "constant")):
        with pytest.raises(ValueError, match="resume it with the same --lr-schedule"):
            base.train(str(work), str(work / "shards"), steps=steps, batch=2, lr=3e-4, lr_schedule=schedule)
    assert (work / "base.state.pt").read_bytes() == before
    out = tmp_path / "cosine.safetensors"
    cli._export_base(str(work), 0, out)
    with safetensors.safe_open(str(out), framework="pt") as f:
        training = json.loads(f.metadata()["realisid_mini"])["training"]
    assert training["base stage 2"]["lr_schedule"] == "cosine" and training["base stage 2"]["steps"] == 3
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        base.learning_rate(str(tmp_path / "other"), 3, 3e-4, "linear")


def _checkpoint_tensors(path) -> tuple[dict, dict]:
    import safetensors.torch

    with safetensors.safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["realisid_mini"])
    return safetensors.torch.load_file(str(path)), info


def test_vae_decoder_stage_from_the_committed_file_updates_the_checkpoint_vae_only(tmp_path, monkeypatch,
                                                                                    pack_node_ids):
    """A decoder stage started from an exported stage-1 file (scratch states do not outlive their machine): the
    export writes the new decoder into the VAE file and into the base checkpoint, whose UNet, text encoders,
    encoder and latent normalisation stay bit for bit, so the base and branches trained on those latents stay
    valid."""
    import shutil

    from realisid.mini import cli, files, vae

    _trained_base_work(tmp_path, monkeypatch)
    monkeypatch.setattr(files, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    checkpoint = tmp_path / "checkpoints" / files.BASE_FILE
    cli._export_base(str(tmp_path), 0, checkpoint)
    before, before_info = _checkpoint_tensors(checkpoint)
    stage_one = tmp_path / "stage1.safetensors"
    shutil.copy(tmp_path / "shipped_vae" / files.VAE_FILE, stage_one)
    stage_one_info = files.read_info(stage_one, "vae")

    work = tmp_path / "decoder"
    vae.train_decoder(str(work), steps=3, batch=2, patch=32, init=str(stage_one))
    cli._export("vae", str(work), 0)

    after, after_info = _checkpoint_tensors(checkpoint)
    assert set(after) == set(before)
    decoder_keys = [k for k in after if k.startswith("first_stage_model.taesd_decoder.")]
    assert decoder_keys and any(not torch.equal(after[k], before[k]) for k in decoder_keys)
    kept = [k for k in after if k not in decoder_keys]
    assert any(k.startswith("model.diffusion_model.") for k in kept)
    assert "first_stage_model.vae_scale" in kept and "first_stage_model.taesd_encoder.0.weight" in kept
    for key in kept:
        assert torch.equal(after[key], before[key]), key
    training = after_info["training"]
    assert list(training)[:2] == ["vae", "vae-decoder"] and training["vae-decoder"]["steps"] == 3
    assert training["base"] == before_info["training"]["base"]

    shipped = vae.build_taesd(0)
    shipped_info = files.load_networks(files.VAE_DIR / files.VAE_FILE, "vae", {"vae": shipped})
    for key in decoder_keys:  # the VAE file and the checkpoint hold the same decoder
        name = key[len("first_stage_model."):]
        assert torch.equal(shipped.state_dict()[name].half(), after[key]), key
    assert shipped_info["raw_latent_std"] == stage_one_info["raw_latent_std"]
    assert shipped_info["training"]["vae"] == stage_one_info["training"]["vae"]

    # the VAE file now holds a decoder stage: it is no stage-1 file to start another from
    with pytest.raises(ValueError, match="already holds a trained decoder stage"):
        vae.train_decoder(str(tmp_path / "again"), steps=1, batch=2, patch=32,
                          init=str(files.VAE_DIR / files.VAE_FILE))
    # a resumed decoder stage must read the stage-1 file it started from
    shutil.copy(checkpoint, stage_one)
    with pytest.raises(ValueError, match="not the stage-1 file this decoder stage started from"):
        vae.train_decoder(str(work), steps=4, batch=2, patch=32)
    # a folder with its own stage 1 and another file named: ambiguous, refused
    with pytest.raises(ValueError, match="holds its own stage 1"):
        vae.train_decoder(str(tmp_path), steps=1, batch=2, patch=32, init=str(stage_one))


def test_checkpoint_vae_swap_refuses_another_encoder(tmp_path, monkeypatch, pack_node_ids):
    from realisid.mini import base, cli, vae

    _trained_base_work(tmp_path, monkeypatch)
    checkpoint = tmp_path / "base.safetensors"
    cli._export_base(str(tmp_path), 0, checkpoint)
    other = vae.build_taesd(seed=9)  # every encoder weight differs from the checkpoint's
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="encoder differs"):
        base.replace_checkpoint_vae(checkpoint, other.state_dict(), {})
    assert checkpoint.read_bytes() == before


def test_base_loss_is_the_min_snr_v_objective(pack_node_ids):
    """The x0-space loss through ComfyUI's model_sampling equals the textbook v-prediction objective: target
    v = (noise - sigma x0) / sqrt(sigma^2 + 1), weight min(SNR, gamma) / (SNR + 1), SNR = 1 / sigma^2."""
    import comfy.model_sampling

    from realisid.mini import base

    model, _ = base.build(seed=1)
    assert isinstance(model.model_sampling, comfy.model_sampling.V_PREDICTION)
    x0 = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    out = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    loss = base.diffusion_loss(model, lambda *a, **k: out, None, None, x0, torch.Generator().manual_seed(4))

    generator = torch.Generator().manual_seed(4)  # the same draws, in the same order
    sigmas = model.model_sampling.sigmas
    sigma = sigmas[torch.randint(0, len(sigmas), (6,), generator=generator)].double()
    noise = torch.randn(x0.shape, generator=generator).double()
    s = sigma[:, None, None, None]
    v_target = (noise - s * x0.double()) / torch.sqrt(s**2 + 1)
    snr = 1 / sigma**2
    weight = torch.minimum(snr, torch.full_like(snr, base.MIN_SNR_GAMMA)) / (snr + 1)
    expected = (weight * (out.double() - v_target).square().mean(dim=(1, 2, 3))).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
