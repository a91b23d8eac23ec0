"""`fit --ip-adapter`: identity tokens in the frozen base's cross-attention (the InstantID-style baseline's
IP-Adapter, issue 14), trained through the same masked attention that sampling patches into the MODEL."""

import pytest
import torch

from realisid import checkpoint, geometry
from realisid.checkpoint_format import CheckpointError
from realisid.instantid import attention
from realisid.ip_adapter import attn2_modules, attn2_widths
from realisid.train.loop import Trainer
from realisid.train.step import IP_KEY, ip_transformer_options, unet_forward
from tests.helpers import train_synthetic


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("train_ip"))


def _trainer(env, out, **kw):
    cfg = train_synthetic.train_config(env, out, branches="global", global_hint="face_hint", hint="kps5",
                                       ip_adapter=True, **kw)
    return Trainer(cfg)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit_ip")
    trainer = _trainer(env, out, steps=12, overfit=True)
    fresh = {k: v.clone() for k, v in trainer.model.ip_adapter.state_dict().items()}
    losses = trainer.fit()
    return trainer, fresh, losses, out


def _inputs(trainer, seed=3):
    host = trainer.host
    item = trainer.dataset[0]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([400.0])
    context, y = host.encode_captions([item["caption"]], (64, 64))
    p_id = trainer.model.project(host.encode_identity_clip(item["face_crop"][None]))
    return x, t, context, y, p_id, item["box"][None].double()


def test_the_new_attention_starts_at_zero_with_the_base_keys(env, tmp_path):
    """to_k_ip copies each layer's text to_k, to_v_ip is zero: at step 0 the base's prediction is unchanged."""
    trainer = _trainer(env, tmp_path, steps=1)
    unet, ip = trainer.host.unet, trainer.model.ip_adapter
    layers = [attn2 for _, attn2 in attn2_modules(unet)]
    assert len(ip.indices) == len(layers) > 0 and ip.indices == [2 * j + 1 for j in range(len(layers))]
    for index, attn2 in zip(ip.indices, layers, strict=True):
        assert torch.equal(ip.to_k[str(index)].weight, attn2.to_k.weight)
        assert not bool(ip.to_v[str(index)].weight.any())
    assert trainer.model.config["ip_adapter"] == {"widths": attn2_widths(unet)}
    x, t, context, y, p_id, boxes = _inputs(trainer)
    with torch.no_grad():
        kv = {i: ip.project(i, p_id) for i in ip.indices}
        patched = unet_forward(unet, x, t, context, y, {}, transformer_options=ip_transformer_options(
            unet, ip, kv, boxes, (8, 8)))
        plain = unet_forward(unet, x, t, context, y, {})
    assert torch.equal(patched, plain)


def test_training_moves_the_ip_adapter_and_the_file_keeps_it(trained):
    trainer, fresh, losses, out = trained
    assert losses[-1] < losses[0]
    moved = {k for k, v in trainer.model.ip_adapter.state_dict().items() if not torch.equal(v, fresh[k])}
    assert any(k.startswith("to_v.") for k in moved) and any(k.startswith("to_k.") for k in moved)
    loaded = checkpoint.load_realisid(str(out / "realisid-final.safetensors"), dtype=torch.float32)
    assert loaded.config["ip_adapter"] == trainer.model.config["ip_adapter"]
    for key, value in trainer.model.ip_adapter.state_dict().items():
        assert torch.equal(loaded.ip_adapter.state_dict()[key], value.cpu()), key


def test_training_forward_equals_the_sampling_patch(trained):
    """The UNet as trained (BranchForward's K/V through `PairedIPAttention`) equals the UNet as sampled (the
    MODEL clone of RealisID InstantID Regional Attention, the positive row), with trained non-zero weights."""
    trainer, _, _, _ = trained
    unet, model = trainer.host.unet, trainer.model
    x, t, context, y, p_id, boxes = _inputs(trainer, seed=5)
    with torch.no_grad():
        kv = {i: model.ip_adapter.project(i, p_id) for i in model.ip_adapter.indices}
        trained_pred = unet_forward(unet, x, t, context, y, {}, transformer_options=ip_transformer_options(
            unet, model.ip_adapter, kv, boxes, (8, 8)))
        box = tuple(float(v) for v in boxes[0])
        patched = attention.apply_regional_ip_adapter(trainer.host.patcher, model, [(p_id[0], box)], weight=1.0)
        options = {**patched.model_options["transformer_options"], "cond_or_uncond": [0]}
        sampled = patched.model.diffusion_model(x, t, context=context, y=y, control=None,
                                                transformer_options=options)
        plain = unet_forward(unet, x, t, context, y, {})
    torch.testing.assert_close(trained_pred, sampled, atol=1e-5, rtol=1e-5)
    assert float((trained_pred - plain).abs().max()) > 1e-5  # the identity now changes the prediction


def test_paired_attention_matches_a_direct_masked_attention():
    """Row b's identity K/V act inside row b's box only, scaled by the coverage: an independent computation."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 8, generator=gen) for _ in range(3))
    k_ip, v_ip = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    boxes = geometry.frac_to_latent([(0.0, 0.0, 0.5, 0.5), (0.25, 0.5, 1.0, 1.0)], (4, 4))
    extra = {"n_heads": 2, "original_shape": [2, 4, 4, 4]}
    out = attention.PairedIPAttention(k_ip, v_ip, boxes, [geometry.LEVEL0], weight=0.5)(q, k, v, extra)

    def attn(q_, k_, v_):
        split = [a.reshape(a.shape[0], a.shape[1], 2, 4).transpose(1, 2) for a in (q_, k_, v_)]
        w = torch.softmax(split[0] @ split[1].transpose(-1, -2) / 2.0, dim=-1)
        return (w @ split[2]).transpose(1, 2).reshape(q_.shape[0], q_.shape[1], -1)

    cover = torch.zeros(2, 4, 4)
    cover[0, :2, :2] = 1.0
    cover[1, 2:, 1] = 1.0  # x from 1.0 to 4.0 latent: cells 1, 2, 3 whole; y from 2 to 4: rows 2, 3
    cover[1, 2:, 2:] = 1.0
    expected = attn(q, k, v) + 0.5 * cover.reshape(2, 16, 1) * attn(q, k_ip, v_ip)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_forward_module_returns_the_projected_identity_kv(trained):
    trainer, _, _, _ = trained
    batch = trainer._batch(0)
    loss, _ = trainer.compute_loss(batch, torch.Generator().manual_seed(1))
    loss.backward()
    grads = [p.grad for p in trainer.model.ip_adapter.parameters()]
    trainer.optimizer.zero_grad(set_to_none=True)
    assert all(g is not None for g in grads) and any(float(g.abs().max()) > 0 for g in grads)
    x, t, context, y, p_id, boxes = _inputs(trainer)
    item = trainer.dataset[0]
    identity = trainer.host.encode_identity_clip(item["face_crop"][None])
    with torch.no_grad():
        out = trainer.forward_module(x, t, identity, (item["hint"].float() / 255)[None], boxes.float(), y, [True])
    null = trainer.model.null_identity(1)
    first = trainer.model.ip_adapter.indices[0]
    torch.testing.assert_close(out[IP_KEY][first][1], trainer.model.ip_adapter.project(first, null)[1])


def test_a_file_whose_ip_adapter_config_is_bad_is_refused(trained, tmp_path):
    import json

    import safetensors.torch

    _, _, _, out = trained
    source = out / "realisid-final.safetensors"
    tensors = safetensors.torch.load_file(str(source))
    with open(source, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    config = json.loads(header["__metadata__"]["realisid"])
    bad = tmp_path / "bad_widths.safetensors"
    safetensors.torch.save_file(tensors, str(bad), metadata={"realisid": json.dumps(
        {**config, "ip_adapter": {"widths": ["wide"]}})})
    with pytest.raises(CheckpointError, match=r"bad_widths.safetensors: config ip_adapter.widths\[0\] is 'wide'"):
        checkpoint.load_realisid(str(bad))
    missing = tmp_path / "no_ip_tensors.safetensors"
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("ip_adapter.")}, str(missing),
                                metadata={"realisid": json.dumps(config)})
    with pytest.raises(CheckpointError, match="no_ip_tensors.safetensors: tensors do not match its RealisID config"):
        checkpoint.load_realisid(str(missing))


def test_a_checkpointed_unet_gives_the_ip_adapter_the_same_gradients(trained):
    """--checkpoint-unet recomputes the frozen UNet in backward; the identity K/V reach it from outside the
    checkpointed function, and their gradients must be those of the plain forward."""
    trainer, _, _, _ = trained
    batch = trainer._batch(0)
    layer = trainer.model.ip_adapter.to_v[str(trainer.model.ip_adapter.indices[0])]

    def loss_and_grad(checkpointed: bool):
        trainer.cfg.checkpoint_unet = checkpointed
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer.compute_loss(batch, torch.Generator().manual_seed(11))
        loss.backward()
        grad = layer.weight.grad.clone()
        trainer.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad

    try:
        plain, checkpointed = loss_and_grad(False), loss_and_grad(True)
    finally:
        trainer.cfg.checkpoint_unet = False
    torch.testing.assert_close(checkpointed[0], plain[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(checkpointed[1], plain[1], atol=1e-6, rtol=1e-5)
    assert float(plain[1].abs().max()) > 0
