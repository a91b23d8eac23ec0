"""InstantID as the local branch: loading tiny InstantID-shaped files, validation errors, the batched local pass.

File layouts: see tests/helpers/fake_instantid.py (from the InstantX/InstantID model card and diffusers'
ControlNetModel config). Real-size shapes are checked on the meta device, against ComfyUI's own detector.
"""

import json

import comfy.model_detection
import numpy as np
import pytest
import safetensors.torch
import torch

from realisid import branches, control, identity
from realisid.faces import EmbeddingSpaceError, check_space
from realisid.faces.record import FaceRecord
from realisid.instantid import model as instantid
from tests.helpers import fake_instantid as fi
from tests.helpers import tiny_realisid as tr

CROP = 8


@pytest.fixture(scope="module")
def tiny_config():
    return tr.tiny_unet_config("sdxl")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_config):
    return fi.write_instantid(tmp_path_factory.mktemp("iid"), tiny_config)


@pytest.fixture(scope="module")
def model(files):
    return instantid.load_instantid(str(files[0]), str(files[1]), crop_size=CROP)


# ------------------------------------------------------------------------------------------- file layout ------
def test_fake_files_use_instantids_key_names(files, tiny_config):
    state = safetensors.torch.load_file(str(files[0]))
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "add_embedding.linear_1.weight",
                "controlnet_cond_embedding.conv_in.weight", "controlnet_cond_embedding.blocks.5.weight",
                "controlnet_cond_embedding.conv_out.weight", "controlnet_down_blocks.0.weight",
                "controlnet_mid_block.weight", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.downsamplers.0.conv.weight", "mid_block.attentions.0.proj_in.weight"):
        assert key in state, key
    assert state["controlnet_cond_embedding.conv_in.weight"].shape == (16, 3, 3, 3)
    ip = torch.load(str(files[1]), weights_only=True)
    assert set(ip) == {"image_proj", "ip_adapter"}
    assert sorted(ip["ip_adapter"]) == sorted(f"{i}.to_{kv}_ip.weight" for i in (1, 3, 5, 7) for kv in "kv")
    assert ip["image_proj"]["proj_in.weight"].shape == (64, 512)


def test_real_size_identitynet_config_matches_comfyui_detection():
    """Real IdentityNet shapes (SDXL, on meta): our reader agrees with ComfyUI's diffusers detector."""
    sdxl = dict(image_size=32, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                transformer_depth_middle=10, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                use_linear_in_transformer=True, num_head_channels=64, use_spatial_transformer=True, legacy=False)
    state = fi.identitynet_state(sdxl, device="meta")
    assert state["add_embedding.linear_1.weight"].shape == (1280, 2816)
    assert state["controlnet_cond_embedding.conv_out.weight"].shape == (320, 256, 3, 3)
    assert sum(k.startswith("controlnet_down_blocks.") and k.endswith("weight") for k in state) == 9
    ours = instantid.controlnet_config_from_diffusers(state)
    detected = comfy.model_detection.unet_config_from_diffusers_unet(dict(state))
    assert detected is not None, "ComfyUI does not recognise the generated real-size IdentityNet"
    for key in ("model_channels", "num_res_blocks", "channel_mult", "transformer_depth", "transformer_depth_middle",
                "context_dim", "adm_in_channels", "use_linear_in_transformer", "num_head_channels"):
        assert ours[key] == detected[key], key
    assert ours["transformer_depth"] == [0, 0, 2, 2, 10, 10] and ours["hint_channels"] == 3


def test_real_size_resampler_config_is_read_from_weights():
    real = {"dim": 1280, "depth": 4, "dim_head": 64, "heads": 20, "num_queries": 16, "embedding_dim": 512,
            "output_dim": 2048, "ff_mult": 4, "source_tokens": 1}
    with torch.device("meta"):
        state = identity.build_projector(real).state_dict()
    assert state["latents"].shape == (1, 16, 1280) and state["layers.3.1.3.weight"].shape == (1280, 5120)
    assert instantid.resampler_config_from_state(state) == real


def test_real_size_ip_adapter_has_70_cross_attentions_matching_sdxl():
    sdxl = dict(model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                transformer_depth_middle=10)
    widths = fi.attn2_hidden_sizes(sdxl)
    assert len(widths) == 70  # keys 1, 3, ..., 139 in ip-adapter.bin
    assert widths[:4] == [640] * 4 and widths[4:24] == [1280] * 20  # "1.to_k_ip.weight" is (640, 2048)
    assert widths[24:54] == [1280] * 30 and widths[54:60] == [640] * 6 and widths[60:] == [1280] * 10


# ------------------------------------------------------------------------------------------- loading ----------
def test_load_builds_a_local_only_realisid_model(model, tiny_config):
    cfg = model.config
    assert cfg["kind"] == "instantid" and cfg["identity_space"] == "arcface-antelopev2-512"
    assert cfg["hint"] == "kps5" and cfg["base_family"] == "sdxl" and cfg["crop_size"] == CROP
    assert cfg["identity_input"] == "raw_arcface" and cfg["global"] is None
    assert model.global_net is None and model.crop_size == CROP
    assert model.ip_adapter.indices == [1, 3, 5, 7]
    assert model.unet_config["context_dim"] == tiny_config["context_dim"]
    assert model.project(torch.randn(2, 512) * 20).shape == (2, fi.TINY_RESAMPLER["num_queries"], 32)


def test_default_crop_size_is_instantids_training_scale(files):
    assert instantid.load_instantid(str(files[0]), str(files[1])).crop_size == 128


def test_loaded_identitynet_computes_what_the_source_network_computes(model, tiny_config):
    """Every diffusers tensor lands in the right cldm slot: same outputs as the network the file came from."""
    # heads are not stored in the weights: the loader uses SDXL's 64-channel heads
    source = branches.build_branch({**tiny_config, "num_head_channels": 64}, 3)
    fi._random_(source, 3)
    x, hint = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64)
    kwargs = dict(timesteps=torch.tensor([500.0]), context=torch.randn(1, 4, 32), y=torch.randn(1, tr.ADM_CHANNELS))
    ref = source(x=x, hint=hint, **kwargs)
    out = model.local_net(x=x, hint=hint, **kwargs)
    for a, b in zip(ref["output"] + ref["middle"], out["output"] + out["middle"], strict=True):
        torch.testing.assert_close(a, b)


def test_projector_matches_the_files_resampler(model, files):
    proj = identity.build_projector({**fi.TINY_RESAMPLER, "output_dim": 32})
    proj.load_state_dict(torch.load(str(files[1]), weights_only=True)["image_proj"])
    emb = torch.randn(3, 512) * 25
    torch.testing.assert_close(model.project(emb).float(), proj(emb))


def test_unit_embedding_is_rescaled_to_a_raw_norm(model):
    emb = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    torch.testing.assert_close(model.project(emb), model.project(emb * instantid.FALLBACK_ARCFACE_NORM))


def test_safetensors_ip_adapter_loads_the_same(tmp_path, tiny_config, model):
    _, ip = fi.write_instantid(tmp_path, tiny_config, ip_name="ip-adapter.safetensors")
    cn = tmp_path / "controlnet" / "instantid_controlnet.safetensors"
    other = instantid.load_instantid(str(cn), str(ip), crop_size=CROP)
    emb = torch.randn(1, 512) * 20
    torch.testing.assert_close(other.project(emb), model.project(emb))
    torch.testing.assert_close(other.ip_adapter.to_k["5"].weight, model.ip_adapter.to_k["5"].weight)


# ------------------------------------------------------------------------------------------- errors -----------
def test_sd15_controlnet_is_refused(tmp_path, files):
    path = tmp_path / "sd15_cn.safetensors"
    safetensors.torch.save_file(fi.identitynet_state(tr.tiny_unet_config("sd15")), str(path))
    with pytest.raises(instantid.InstantIDFileError, match="SD1.5-style ControlNet.*IdentityNet"):
        instantid.load_instantid(str(path), str(files[1]), crop_size=CROP)


def test_wrong_hint_channels_are_refused(tmp_path, files, tiny_config):
    path = tmp_path / "depth1.safetensors"
    safetensors.torch.save_file(fi.identitynet_state(tiny_config, hint_channels=1), str(path))
    with pytest.raises(instantid.InstantIDFileError, match="1-channel hint"):
        instantid.load_instantid(str(path), str(files[1]), crop_size=CROP)


def test_ldm_format_controlnet_is_refused(models_dir, files):
    path = models_dir / "controlnet" / "tiny_sdxl_controlnet.safetensors"
    with pytest.raises(instantid.InstantIDFileError, match="not a diffusers-format ControlNet.*IdentityNet"):
        instantid.load_instantid(str(path), str(files[1]), crop_size=CROP)


def test_controlnet_and_ip_adapter_of_different_widths_are_refused(tmp_path, files):
    wide = {**tr.tiny_unet_config("sdxl"), "context_dim": 48}
    cn, _ = fi.write_instantid(tmp_path, wide)
    with pytest.raises(instantid.InstantIDFileError, match="48-wide tokens.*32-wide identity tokens"):
        instantid.load_instantid(str(cn), str(files[1]), crop_size=CROP)


def _copy_with_config(tmp_path, source, heads) -> str:
    """The IdentityNet file in a ControlNetModel/ folder with a diffusers config.json giving `heads`."""
    folder = tmp_path / "ControlNetModel"
    folder.mkdir()
    path = folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(source.read_bytes())
    config = {"_class_name": "ControlNetModel", "block_out_channels": [64, 128], "attention_head_dim": heads}
    (folder / "config.json").write_text(json.dumps(config))
    return str(path)


def test_identitynet_with_other_head_widths_in_its_config_is_refused(tmp_path, files):
    """diffusers reads attention_head_dim as the head COUNT: 8 heads on 64 / 128 channels are 8 / 16 wide."""
    path = _copy_with_config(tmp_path, files[0], 8)
    with pytest.raises(instantid.InstantIDFileError,
                       match=r"diffusion_pytorch_model.safetensors: its config.json gives attention heads \[8.0, "
                             r"16.0\].*assumes 64-channel attention heads.*InstantX/InstantID"):
        instantid.load_instantid(path, str(files[1]), crop_size=CROP)


def test_identitynet_whose_config_has_64_wide_heads_loads(tmp_path, files):
    path = _copy_with_config(tmp_path, files[0], [1, 2])  # InstantID's is [5, 10, 20] over [320, 640, 1280]
    assert instantid.load_instantid(path, str(files[1]), crop_size=CROP).config["kind"] == "instantid"


def test_identitynet_whose_widths_64_wide_heads_cannot_split_is_refused(tmp_path, files):
    # attention 96 wide (GroupNorm needs multiples of 32): 32-channel heads split it, 64-channel ones cannot
    narrow = {**tr.tiny_unet_config("sdxl"), "model_channels": 96, "channel_mult": [1, 1], "num_head_channels": 32}
    path = tmp_path / "narrow_heads.safetensors"
    safetensors.torch.save_file(fi.identitynet_state(narrow), str(path))
    with pytest.raises(instantid.InstantIDFileError,
                       match=r"narrow_heads.safetensors: attention .*attn1 is 96 channels wide.*64-channel"):
        instantid.load_instantid(str(path), str(files[1]), crop_size=CROP)


def test_ip_adapter_without_sections_is_refused(tmp_path, files):
    path = tmp_path / "plain.bin"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, str(path))
    with pytest.raises(instantid.InstantIDFileError, match="no 'image_proj' and 'ip_adapter'.*ip-adapter.bin"):
        instantid.load_instantid(str(files[0]), str(path), crop_size=CROP)


def test_clip_image_ip_adapter_is_refused(tmp_path, files, tiny_config):
    data = fi.ip_adapter_state(tiny_config)
    proj = identity.build_projector({**fi.TINY_RESAMPLER, "embedding_dim": 1280, "output_dim": 32})
    data["image_proj"] = proj.state_dict()
    path = tmp_path / "ip-adapter_sdxl.bin"
    torch.save(data, str(path))
    with pytest.raises(instantid.InstantIDFileError, match="1280-d inputs.*512-d ArcFace"):
        instantid.load_instantid(str(files[0]), str(path), crop_size=CROP)


def test_pickled_code_is_never_unpickled(tmp_path, files):
    path = tmp_path / "evil.bin"
    torch.save({"image_proj": FaceRecord, "ip_adapter": {}}, str(path))  # a class: needs full unpickling
    with pytest.raises(instantid.InstantIDFileError, match="weights-only"):
        instantid.load_instantid(str(files[0]), str(path), crop_size=CROP)


def test_sd15_base_is_refused(model):
    with pytest.raises(ValueError, match="only with SDXL checkpoints"):
        instantid.check_base(model, tr.tiny_base_model("sd15"))
    instantid.check_base(model, tr.tiny_base_model("sdxl"))  # the matching base passes


def test_non_arcface_embedding_space_is_refused(model):
    with pytest.raises(EmbeddingSpaceError, match="'dlib-resnet-128'.*'arcface-antelopev2-512'"):
        check_space("dlib-resnet-128", model.identity_space)


# ------------------------------------------------------------------------------------------- local pass -------
def _faces(model, k):
    gen = torch.Generator().manual_seed(7)
    boxes = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), (0.25, 0.5, 0.75, 1.0)][:k]
    return [control.FaceCondition(p_id=model.project(torch.randn(1, 512, generator=gen) * 20)[0],
                                  landmark_hint=torch.rand(3, CROP * 8, CROP * 8, generator=gen), box=box)
            for box in boxes]


def test_k_faces_in_one_batched_pass_equal_the_sum_of_single_passes(model):
    faces = _faces(model, 2)
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([400.0, 400.0]), torch.randn(2, tr.ADM_CHANNELS)
    both = control.branch_residuals(model, x, t, faces, y=y)
    singles = [control.branch_residuals(model, x, t, [f], y=y) for f in faces]
    assert both["output"] and both["middle"]
    for key in ("output", "middle"):
        for i, r in enumerate(both[key]):
            torch.testing.assert_close(r, singles[0][key][i] + singles[1][key][i], atol=1e-5, rtol=1e-4)
    assert both["output"][0].abs().sum() > 0


def test_local_residuals_stay_inside_the_face_box(model):
    faces = _faces(model, 1)
    out = control.branch_residuals(model, torch.randn(1, 4, 16, 16), torch.tensor([300.0]), faces,
                                   y=torch.randn(1, tr.ADM_CHANNELS))
    first = out["output"][0][0].abs().sum(dim=0)  # (16, 16) at full latent scale
    assert first[:8, :8].sum() > 0 and first[8:, :].sum() == 0 and first[:, 8:].sum() == 0


def test_realisid_control_runs_identitynet_during_sampling(model):
    """The one control class drives IdentityNet: a sampled image changes with the identity."""
    import comfy.sample

    base = tr.tiny_base_model("sdxl")
    positive, negative = tr.tiny_conditioning("sdxl")
    latent = torch.zeros(1, 4, 16, 16)
    results = []
    for seed in (1, 2):
        faces = _faces(model, 1)
        faces[0].p_id = model.project(torch.randn(1, 512, generator=torch.Generator().manual_seed(seed)) * 20)[0]
        ctrl = control.RealisIDControl(model, faces)
        pos = [[c[0], {**c[1], "control": ctrl, "control_apply_to_uncond": False}] for c in positive]
        noise = comfy.sample.prepare_noise(latent, 0)
        results.append(comfy.sample.sample(base, noise, 2, 5.0, "euler", "normal", pos, negative, latent, seed=0))
    assert not torch.allclose(results[0], results[1])


# ------------------------------------------------------------------------------------------- crop frame -------
def test_default_crop_frame_is_recorded_and_other_models_keep_the_face_box(model, files):
    assert model.config["crop_frame"] == instantid.DEFAULT_CROP_FRAME == 2.0
    assert instantid.crop_frame(model) == 2.0
    wide = instantid.load_instantid(str(files[0]), str(files[1]), crop_size=CROP, crop_frame=3.0)
    assert instantid.crop_frame(wide) == 3.0
    assert instantid.crop_frame(tr.tiny_realisid_model("sdxl")) == 1.0  # trained models learnt their framing


@pytest.mark.parametrize("frame", [0.5, float("nan"), 4.5])
def test_crop_frame_outside_one_to_four_is_refused(files, frame):
    with pytest.raises(ValueError, match="crop_frame"):
        instantid.load_instantid(str(files[0]), str(files[1]), crop_size=CROP, crop_frame=frame)


def test_framed_box_widens_about_the_centre_and_stays_square():
    from realisid.geometry import FaceSquare

    square = FaceSquare(0.3, 0.6, 0.2, source_aspect=1.5)
    framed = instantid.framed_box(square, 2.0)
    assert isinstance(framed, FaceSquare) and framed.source_aspect == 1.5
    hw = (64, 96)  # on a 96-wide, 64-high latent the face box is 0.2 * 64 = 12.8 cells; framed 25.6
    x0, y0, x1, y1 = framed.fractions(hw)
    assert (x1 - x0) * 96 == pytest.approx(25.6) and (y1 - y0) * 64 == pytest.approx(25.6)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((0.3, 0.6))
    assert instantid.framed_box((0.2, 0.4, 0.4, 0.5), 3.0) == pytest.approx((0.0, 0.3, 0.6, 0.6))
    assert instantid.framed_box(square, 1.0) == square


def test_framed_hint_puts_the_keypoints_on_the_face_inside_the_wider_crop():
    """The hint of a framed crop, drawn in the driver's square_box(frame): each keypoint lands where the framed
    square maps it (worked by hand), i.e. the face box covers the middle 1/frame of the crop."""
    from realisid.conditioning import render_hint
    from realisid.faces.render import KPS5_COLOURS

    box, kps = (60, 50, 140, 150), [(85, 90), (115, 90), (100, 110), (88, 130), (112, 130)]
    driver = FaceRecord(box=box, score=1, kps=kps, image_size=(200, 200))
    size = 256
    hint = np.round(render_hint(driver, "kps5", size, expand=2.0) * 255).astype(int)
    # square side max(80, 100) * 2 = 200 around the box centre (100, 100): crop [0, 200] x [0, 200], 256 / 200 px
    for (x, y), colour in zip(kps, KPS5_COLOURS, strict=True):
        assert hint[round(y * 256 / 200), round(x * 256 / 200)].tolist() == list(colour)
    # the face box [60, 140] x [50, 150] maps to [76.8, 179.2] x [64, 192]: nothing is drawn outside it
    assert hint[:60].max() == 0 and hint[200:].max() == 0 and hint[:, :70].max() == 0 and hint[:, 186:].max() == 0


def test_face_conditions_frame_instantids_crop_and_hint_but_not_a_trained_models(model):
    """What the apply nodes hand the local branch: for InstantID (frame 2) the box twice the slot's side about
    its centre and the hint of the driver's square_box(2); for a trained RealisID model (frame 1) the slot's own
    square and the hint of the face box itself."""
    from realisid.conditioning import face_conditions, render_hint
    from realisid.identity_sources import EncodedFace
    from realisid.layout import FaceLayout, FaceSlot, face_square

    kps = [(85, 90), (115, 90), (100, 110), (88, 130), (112, 130)]
    record = FaceRecord(box=(60, 50, 140, 150), score=1, kps=kps, image_size=(200, 200))
    square = face_square(0.5, 0.3, 0.1)
    layout = FaceLayout((FaceSlot(square),))
    face = EncodedFace(record, torch.randn(1, 512, generator=torch.Generator().manual_seed(3)) * 20,
                       instantid.IDENTITY_SPACE)
    (framed,) = face_conditions(model, [face], layout)
    x0, y0, x1, y1 = framed.box.fractions((64, 64))
    assert (x1 - x0, y1 - y0) == pytest.approx((0.2, 0.2)) and ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((0.5, 0.3))
    hint = framed.landmark_hint.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(hint, render_hint(record, "kps5", CROP * 8, expand=2.0))
    assert not np.array_equal(hint, render_hint(record, "kps5", CROP * 8, expand=1.0))

    trained = tr.tiny_realisid_model("sdxl", identity_space=instantid.IDENTITY_SPACE)
    ring = np.stack([100 + 30 * np.cos(np.linspace(0, 6.2, 68)), 100 + 40 * np.sin(np.linspace(0, 6.2, 68))], 1)
    with_landmarks = FaceRecord(box=record.box, score=1, kps=kps, image_size=(200, 200), landmarks68=ring)
    tiny_face = EncodedFace(with_landmarks, torch.randn(1, tr.SOURCE_DIM), instantid.IDENTITY_SPACE)
    (plain,) = face_conditions(trained, [tiny_face], layout)
    assert plain.box == square


def test_loader_node_passes_the_crop_frame_and_old_workflows_get_the_default(files, pack_node_ids, monkeypatch):
    """crop_frame is an optional input: a prompt saved before it existed loads with the default frame."""
    import sys

    import nodes as comfy_nodes

    loader = comfy_nodes.NODE_CLASS_MAPPINGS["RealisIDInstantIDLoader"]
    by_folder = {"controlnet": str(files[0]), "instantid": str(files[1])}
    monkeypatch.setattr(sys.modules[loader.__module__], "model_path", lambda folder, name: by_folder[folder])
    schema = loader.define_schema()
    frame_input = next(i for i in schema.inputs if i.id == "crop_frame")
    assert frame_input.optional and frame_input.default == instantid.DEFAULT_CROP_FRAME
    wide = loader.execute(control_net_name="cn", ip_adapter_name="ip", crop_size=CROP, crop_frame=3.0).result[0]
    old = loader.execute(control_net_name="cn", ip_adapter_name="ip", crop_size=CROP).result[0]
    assert instantid.crop_frame(wide) == 3.0 and instantid.crop_frame(old) == instantid.DEFAULT_CROP_FRAME
    restore_input = next(i for i in schema.inputs if i.id == "restore_noise")
    assert restore_input.optional and restore_input.default == instantid.DEFAULT_RESTORE_NOISE
    flipped = not instantid.DEFAULT_RESTORE_NOISE
    toggled = loader.execute(control_net_name="cn", ip_adapter_name="ip", crop_size=CROP,
                             restore_noise=flipped).result[0]
    assert control.restores_noise(toggled) is flipped
    assert control.restores_noise(old) is instantid.DEFAULT_RESTORE_NOISE
