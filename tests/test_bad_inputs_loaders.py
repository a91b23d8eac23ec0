"""Bad model files, generated at test time: each loader refuses them, before building anything, with one error
of its own class whose message names the file and what in it is wrong (issue 17).

Every case writes a hostile variant of a tiny valid file; the combinations put several faults in one file and
expect the first one in the loader's documented order (metadata, branches, projector, crop size, then tensors).
"""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
import safetensors.torch
import torch

from realisid import checkpoint, validation
from realisid.checkpoint_format import CheckpointError
from realisid.instantid import model as instantid
from realisid.instantid.model import InstantIDFileError
from tests.helpers import fake_instantid as fi
from tests.helpers import tiny_realisid as T
from tests.helpers.checkpoint_cases import (
    CONFIG_CASES,
    FILE_CASES,
    METADATA_CASES,
    _truncated,
    setter,
    unet,
    unet_setter,
)

NAN, INF = float("nan"), float("inf")
# the hostile pickles use protocol 4; torch's weights-only unpickler warns before it refuses them
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def raises_exactly(cls, fn, *fragments):
    """Run fn; it must raise exactly `cls` (not a subclass, not a library error) with every fragment in its text."""
    with pytest.raises(Exception) as caught:
        fn()
    assert type(caught.value) is cls, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


# ------------------------------------------------------------------------------------ RealisID checkpoint ------
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(config, tensors) of a valid tiny SDXL RealisID checkpoint, and the folder the hostile files go in."""
    model = T.tiny_realisid_model("sdxl")
    folder = tmp_path_factory.mktemp("bad_ck")
    path = folder / "valid.safetensors"
    checkpoint.save_realisid(model, str(path))
    return json.loads(json.dumps(model.config)), safetensors.torch.load_file(str(path)), folder


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a network for a file that fails validation is the bug the loader must not have."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network was built before the file was validated")

    monkeypatch.setattr(checkpoint, "_model_from_config", refuse)


def write_config(folder: pathlib.Path, case: str, tensors: dict, metadata: str) -> str:
    path = folder / f"{case}.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"realisid": metadata})
    return str(path)


def test_config_faults_are_refused_before_anything_is_built(source, nothing_built):
    """The header checks (every fault: tests/unit/test_checkpoint_format.py) run inside the loader, first; a config
    that passes them but cannot be built (heads unset) is refused by name too."""
    config, tensors, folder = source
    for case, mutate, fragment in (CONFIG_CASES[2], CONFIG_CASES[-1]):  # version 2, crop_size [8]
        bad = json.loads(json.dumps(config))
        mutate(bad)
        path = write_config(folder, case, tensors, json.dumps(bad))
        raises_exactly(CheckpointError, lambda p=path: checkpoint.load_realisid(p), f"{case}.safetensors", fragment)
    case, metadata, fragment = METADATA_CASES[0]
    path = write_config(folder, case, tensors, metadata)
    raises_exactly(CheckpointError, lambda: checkpoint.load_realisid(path), f"{case}.safetensors", fragment)
    bad = json.loads(json.dumps(config))
    unet(bad).update(num_heads=-1, num_head_channels=-1)
    path = write_config(folder, "heads-unset", tensors, json.dumps(bad))
    raises_exactly(CheckpointError, lambda: checkpoint.load_realisid(path), "heads-unset.safetensors",
                   "not describe a buildable network", "Expected")


def _reshaped(key):
    return lambda t: t.update({key: torch.zeros(*t[key].shape[:-1], t[key].shape[-1] + 1)})


def _retyped(key, dtype):
    return lambda t: t.update({key: torch.zeros(t[key].shape, dtype=dtype)})


def _poisoned(key, value):
    def mutate(t):
        t[key] = t[key].clone()
        t[key].view(-1)[0] = value
    return mutate


TENSOR_CASES = [
    ("shape-local-input", _reshaped("local.input_blocks.0.0.weight"), "local.input_blocks.0.0.weight has shape"),
    ("shape-global-zero-conv", _reshaped("global.zero_convs.0.0.weight"), "global.zero_convs.0.0.weight has shape"),
    ("shape-projector-latents", _reshaped("projector.latents"), "projector.latents has shape"),
    ("shape-scalar", lambda t: t.update({"projector.latents": torch.zeros(())}), "projector.latents has shape []"),
    ("dtype-int32", _retyped("projector.latents", torch.int32), "projector.latents is I32"),
    ("dtype-bool", _retyped("projector.latents", torch.bool), "projector.latents is BOOL"),
    ("dtype-float64", _retyped("projector.latents", torch.float64), "projector.latents is F64"),
    ("dtype-mixed", _retyped("projector.latents", torch.float16), "mix dtypes ['F16', 'F32']"),
    ("missing-tensor", lambda t: t.pop("local.middle_block_out.0.weight"), "1 missing"),
    ("extra-tensor", lambda t: t.update({"local.bogus": torch.zeros(1)}), "1 unexpected"),
    ("nan-weight", _poisoned("local.input_blocks.0.0.weight", NAN), "local.input_blocks.0.0.weight holds NaN"),
    ("inf-weight", _poisoned("projector.proj_in.weight", INF), "projector.proj_in.weight holds NaN or infinite"),
    ("neg-inf-weight", _poisoned("global.middle_block_out.0.bias", -INF), "global.middle_block_out.0.bias holds"),
]


@pytest.mark.parametrize("case,mutate,fragment", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_tensors_that_do_not_fit_the_config_are_refused(source, nothing_built, case, mutate, fragment):
    config, tensors, folder = source
    bad = dict(tensors)
    mutate(bad)
    path = write_config(folder, case, bad, json.dumps(config))
    raises_exactly(CheckpointError, lambda: checkpoint.load_realisid(path), f"{case}.safetensors", fragment)


# several faults in one file: the first in the loader's order is reported
CHECKPOINT_COMBINATIONS = [
    ("null-branches+crop-0", [setter("local", value=None), setter("global", value=None), setter("crop_size", value=0)],
     [], "both branches"),
    ("huge-channels+bad-shape", [unet_setter("model_channels", 10**6)], [_reshaped("projector.latents")],
     "model_channels is 1000000"),
    ("version+null-branches", [setter("version", value=9), setter("local", value=None), setter("global", value=None)],
     [], "version 9"),
    ("crop-abc+projector-key", [setter("crop_size", value="abc"), setter("projector", "x", value=1)], [],
     "unknown keys ['x']"),
    ("crop-abc+nan-weight", [setter("crop_size", value="abc")], [_poisoned("projector.latents", NAN)],
     "crop_size is 'abc'"),
    ("nan-weight+bad-shape", [], [_poisoned("projector.proj_in.weight", NAN), _reshaped("projector.latents")],
     "projector.latents has shape"),
    ("int-tensor+nan-tensor", [], [_retyped("projector.latents", torch.int32), _poisoned("projector.proj_in.weight", NAN)],
     "projector.latents is I32"),
    ("missing+bad-shape", [], [lambda t: t.pop("local.middle_block_out.0.weight"), _reshaped("projector.latents")],
     "1 missing"),
    ("hint+model_channels", [setter("local", "hint_channels", value=9), unet_setter("model_channels", -5)], [],
     "local.hint_channels is 9"),
    ("global-huge+local-fine+crop-0", [unet_setter("context_dim", 10**8, "global"), setter("crop_size", value=0)], [],
     "global.unet_config.context_dim"),
]


@pytest.mark.parametrize("case,config_faults,tensor_faults,fragment", CHECKPOINT_COMBINATIONS,
                         ids=[c[0] for c in CHECKPOINT_COMBINATIONS])
def test_checkpoint_fault_combinations_report_the_first_fault(source, nothing_built, case, config_faults,
                                                              tensor_faults, fragment):
    config, tensors, folder = source
    bad_config, bad_tensors = json.loads(json.dumps(config)), dict(tensors)
    for fault in config_faults:
        fault(bad_config)
    for fault in tensor_faults:
        fault(bad_tensors)
    path = write_config(folder, case, bad_tensors, json.dumps(bad_config))
    raises_exactly(CheckpointError, lambda: checkpoint.load_realisid(path), f"{case}.safetensors", fragment)


def test_valid_file_still_loads(source):
    _, _, folder = source
    model = checkpoint.load_realisid(str(folder / "valid.safetensors"))
    assert model.crop_size == T.CROP and model.local_net is not None and model.global_net is not None


def test_crop_size_follows_the_branch_downsampling(source, tmp_path):
    """crop_size must be divisible by 2 ** (levels - 1): 2 for the tiny 2-level UNet, so 6 loads and 5 does not."""
    config, tensors, _ = source
    for crop, ok in ((6, True), (5, False)):
        path = write_config(tmp_path, f"crop{crop}", tensors, json.dumps({**config, "crop_size": crop}))
        if ok:
            assert checkpoint.load_realisid(path).crop_size == crop
        else:
            raises_exactly(CheckpointError, lambda p=path: checkpoint.load_realisid(p), "divisible by 2")


# ------------------------------------------------------------------------------------ InstantID loader ---------
@pytest.fixture(scope="module")
def iid(tmp_path_factory):
    """Valid tiny InstantID files and their raw contents."""
    folder = tmp_path_factory.mktemp("bad_iid")
    cn, ip = fi.write_instantid(folder, T.tiny_unet_config("sdxl"))
    return cn, ip, safetensors.torch.load_file(str(cn)), torch.load(str(ip), weights_only=True)


def _write_bytes(path: pathlib.Path, content: bytes) -> pathlib.Path:
    path.write_bytes(content)
    return path


def _with_state(path: pathlib.Path, state: dict) -> pathlib.Path:
    safetensors.torch.save_file(state, str(path))
    return path


def _with_pickle(path: pathlib.Path, data) -> pathlib.Path:
    torch.save(data, str(path))
    return path


class UnsafeIID:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path("/tmp/realisid_unpickled_instantid"),))


def cn_bad(iid, folder, case):
    """The hostile ControlNet file for `case`; CN_CASES lists the fragment its error must contain."""
    _, _, state, _ = iid
    name = folder / f"{case}.safetensors"
    if case == "cn-garbage":
        return _write_bytes(name, b"\x00garbage" * 10)
    if case == "cn-empty":
        return _write_bytes(name, b"")
    if case == "cn-header-too-large":
        return _write_bytes(name, (2**40).to_bytes(8, "little") + b"{}")
    if case == "cn-truncated":
        return _write_bytes(name, _truncated(iid[0].read_bytes()))
    if case == "cn-unsafe-pickle":
        return _write_bytes(folder / f"{case}.bin", pickle.dumps({"state_dict": UnsafeIID()}))
    if case == "cn-pickled-list":
        return _with_pickle(folder / f"{case}.pt", [1, 2, 3])
    if case == "cn-pickled-strings":
        return _with_pickle(folder / f"{case}.pt", {"conv_in.weight": "abc", "x": 1})
    if case == "cn-no-tensors":
        return _with_pickle(folder / f"{case}.pt", {})
    if case == "cn-nan":
        return _with_state(name, {**state, "conv_in.weight": torch.full_like(state["conv_in.weight"], NAN)})
    if case == "cn-int":
        return _with_state(name, {**state, "conv_in.weight": state["conv_in.weight"].to(torch.int32)})
    if case == "cn-conv_in-1d":
        return _with_state(name, {**state, "conv_in.weight": torch.zeros(5)})
    if case == "cn-no-resnet":
        return _with_state(name, {k: v for k, v in state.items() if not k.startswith("down_blocks.0.resnets.0.conv2")})
    if case == "cn-wrong-shape":
        return _with_state(name, {**state, "controlnet_mid_block.weight": torch.zeros(3, 3, 1, 1)})
    raise KeyError(case)


CN_CASES = [
    ("cn-garbage", "cannot be read as weights"), ("cn-empty", "cannot be read as weights"),
    ("cn-header-too-large", "cannot be read as weights"), ("cn-truncated", "cannot be read as weights"),
    ("cn-unsafe-pickle", "weights-only torch pickle"), ("cn-pickled-list", "holds no tensors (found list)"),
    ("cn-pickled-strings", "entry 'conv_in.weight' is str"), ("cn-no-tensors", "holds no tensors (found dict)"),
    ("cn-nan", "'conv_in.weight' holds NaN"), ("cn-int", "'conv_in.weight' is torch.int32"),
    ("cn-conv_in-1d", "do not describe a diffusers ControlNet"), ("cn-no-resnet", "do not describe a diffusers"),
    ("cn-wrong-shape", "tensor shapes do not fit"),
]


@pytest.mark.parametrize("case,fragment", CN_CASES, ids=[c[0] for c in CN_CASES])
def test_bad_controlnet_file_is_named(iid, tmp_path, case, fragment):
    path = cn_bad(iid, tmp_path, case)
    message = raises_exactly(InstantIDFileError, lambda: instantid.load_instantid(str(path), str(iid[1]), 8),
                             path.name, fragment)
    assert iid[1].name not in message.split("Expected")[0]  # the other file is not blamed
    assert not pathlib.Path("/tmp/realisid_unpickled_instantid").exists()


def ip_bad(iid, folder, case):
    _, _, _, data = iid
    proj, kv = data["image_proj"], data["ip_adapter"]
    bin_path = folder / f"{case}.bin"
    if case == "ip-garbage-bin":
        return _write_bytes(bin_path, b"\x00garbage" * 10)
    if case == "ip-garbage-safetensors":
        return _write_bytes(folder / f"{case}.safetensors", b"\x00garbage" * 10)
    if case == "ip-header-too-large":
        return _write_bytes(folder / f"{case}.safetensors", (2**40).to_bytes(8, "little") + b"{}")
    if case == "ip-unsafe-pickle":
        return _write_bytes(bin_path, pickle.dumps({"image_proj": UnsafeIID(), "ip_adapter": {}}))
    if case == "ip-pickled-list":
        return _with_pickle(bin_path, [proj, kv])
    if case == "ip-no-sections":
        return _with_pickle(bin_path, {"latents": proj["latents"]})
    if case == "ip-sections-not-dicts":
        return _with_pickle(bin_path, {"image_proj": [1], "ip_adapter": "x"})
    if case == "ip-proj-string":
        return _with_pickle(bin_path, {"image_proj": {**proj, "latents": "abc"}, "ip_adapter": kv})
    if case == "ip-nan":
        return _with_pickle(bin_path, {"image_proj": proj, "ip_adapter": {k: v * NAN for k, v in kv.items()}})
    if case == "ip-int":
        return _with_pickle(bin_path, {"image_proj": {**proj, "latents": proj["latents"].long()}, "ip_adapter": kv})
    if case == "ip-kv-1d":
        key = next(iter(kv))
        return _with_pickle(bin_path, {"image_proj": proj, "ip_adapter": {**kv, key: torch.zeros(4)}})
    if case == "ip-latents-2d":
        return _with_pickle(bin_path, {"image_proj": {**proj, "latents": torch.zeros(4, 64)}, "ip_adapter": kv})
    if case == "ip-bad-key":
        return _with_pickle(bin_path, {"image_proj": proj, "ip_adapter": {**kv, "foo": torch.zeros(2, 2)}})
    raise KeyError(case)


IP_CASES = [
    ("ip-garbage-bin", "weights-only torch pickle"), ("ip-garbage-safetensors", "cannot be read as weights"),
    ("ip-header-too-large", "cannot be read as weights"), ("ip-unsafe-pickle", "weights-only torch pickle"),
    ("ip-pickled-list", "no 'image_proj' and 'ip_adapter'"), ("ip-no-sections", "no 'image_proj' and 'ip_adapter'"),
    ("ip-sections-not-dicts", "no 'image_proj' and 'ip_adapter'"), ("ip-proj-string", "entry 'latents' is str"),
    ("ip-nan", "holds NaN"), ("ip-int", "entry 'latents' is torch.int64"), ("ip-kv-1d", "expected a 2-d"),
    ("ip-latents-2d", "shapes no Resampler has"), ("ip-bad-key", "unexpected ip_adapter key 'foo'"),
]


@pytest.mark.parametrize("case,fragment", IP_CASES, ids=[c[0] for c in IP_CASES])
def test_bad_ip_adapter_file_is_named(iid, tmp_path, case, fragment):
    path = ip_bad(iid, tmp_path, case)
    message = raises_exactly(InstantIDFileError, lambda: instantid.load_instantid(str(iid[0]), str(path), 8),
                             path.name, fragment)
    assert iid[0].name not in message.split("Expected")[0]
    assert not pathlib.Path("/tmp/realisid_unpickled_instantid").exists()


@pytest.mark.parametrize("crop", [0, -8, 12, "abc", 10**6, NAN, INF, 8.5, True, None])
def test_instantid_crop_size_is_named(iid, crop):
    raises_exactly(validation.InputError, lambda: instantid.load_instantid(str(iid[0]), str(iid[1]), crop),
                   "crop_size", repr(crop))


INSTANTID_COMBINATIONS = [
    # (case, ControlNet fault or None, IP-Adapter fault or None, crop_size, the name the message must hold)
    ("both-garbage", "cn-garbage", "ip-garbage-bin", 8, "ip-garbage-bin.bin"),
    ("crop+both-garbage", "cn-garbage", "ip-garbage-bin", 0, "crop_size"),
    ("cn-pickle+ip-nan", "cn-unsafe-pickle", "ip-nan", 8, "ip-nan.bin"),
    ("cn-nan+ip-fine+crop-abc", "cn-nan", None, "abc", "crop_size"),
    ("cn-1d+ip-kv-1d", "cn-conv_in-1d", "ip-kv-1d", 8, "ip-kv-1d.bin"),
    ("cn-int+ip-fine", "cn-int", None, 16, "cn-int.safetensors"),
]


@pytest.mark.parametrize("case,cn_fault,ip_fault,crop,name", INSTANTID_COMBINATIONS,
                         ids=[c[0] for c in INSTANTID_COMBINATIONS])
def test_instantid_fault_combinations_name_the_first_bad_input(iid, tmp_path, case, cn_fault, ip_fault, crop, name):
    cn = cn_bad(iid, tmp_path, cn_fault) if cn_fault else iid[0]
    ip = ip_bad(iid, tmp_path, ip_fault) if ip_fault else iid[1]
    cls = validation.InputError if name == "crop_size" else InstantIDFileError
    raises_exactly(cls, lambda: instantid.load_instantid(str(cn), str(ip), crop), name)
    assert not pathlib.Path("/tmp/realisid_unpickled_instantid").exists()


# ------------------------------------------------------------------------------------ insightface pack ---------
ONNX_FAULTS = {"garbage": lambda b: b"\x00garbage" * 50, "empty": lambda b: b"", "truncated": _truncated,
               "html": lambda b: b"<html><body>404 Not Found</body></html>"}


@pytest.mark.parametrize("fault", list(ONNX_FAULTS))
@pytest.mark.parametrize("victim", ["glintr100.onnx", "scrfd_10g_bnkps.onnx"])
def test_unreadable_onnx_file_is_named(tmp_path, fault, victim):
    pytest.importorskip("insightface")
    from realisid.faces.insightface_backend import FaceModelFileError, InsightFaceAnalyzer
    from tests.helpers import fake_insightface

    root = fake_insightface.build_fake_pack(tmp_path)
    path = pathlib.Path(root) / "models" / "antelopev2" / victim
    path.write_bytes(ONNX_FAULTS[fault](path.read_bytes()))
    message = raises_exactly(FaceModelFileError, lambda: InsightFaceAnalyzer(root, "antelopev2"),
                             f"{victim} is not a readable ONNX model", "antelopev2")
    others = {"glintr100.onnx", "scrfd_10g_bnkps.onnx"} - {victim}
    assert not any(f"{other} is not" in message for other in others)


# ------------------------------------------------------------------------------------ through the executor ----
# The whole RealisID-checkpoint corpus again, each file given to RealisID Model Loader in a real prompt: the
# host reports the loader's node, its exact error class and the file (an executor run that names nothing, or a
# library error class, fails here).
EMBEDDED = "embedded (MTCNN + dlib, offline)"
EXECUTOR_CASES = ([(case, "config", mutate, fragment) for case, mutate, fragment in CONFIG_CASES]
                  + [(case, "tensors", mutate, fragment) for case, mutate, fragment in TENSOR_CASES]
                  + [(case, "file", content, fragment) for case, content, fragment in FILE_CASES]
                  + [(case, "metadata", metadata, fragment) for case, metadata, fragment in METADATA_CASES])


def encoder_prompt(loader: dict) -> dict:
    """The cheapest prompt that needs a RealisID model: loader -> Face Encoder -> PreviewImage."""
    from tests.test_nodes import node

    return {"1": loader, "2": node("LoadImage", image="astronaut.jpg"),
            "3": node("RealisIDFaceAnalysis", backend=EMBEDDED, provider="CPU"),
            "4": node("RealisIDFaceEncoder", image=["2", 0], face_analysis=["3", 0], realisid_model=["1", 0],
                      selection="largest", index=0, on_no_face="error",
                      references="each image is a different person"),
            "5": node("PreviewImage", images=["4", 1])}


def write_hostile(source, folder: pathlib.Path, name: str, kind: str, fault) -> None:
    config, tensors, valid_folder = source
    if kind == "config":
        bad = json.loads(json.dumps(config))
        fault(bad)
        write_config(folder, name, tensors, json.dumps(bad))
    elif kind == "tensors":
        bad = dict(tensors)
        fault(bad)
        write_config(folder, name, bad, json.dumps(config))
    elif kind == "metadata":
        write_config(folder, name, tensors, fault)
    else:
        (folder / f"{name}.safetensors").write_bytes(fault((valid_folder / "valid.safetensors").read_bytes()))


@pytest.mark.parametrize("case,kind,fault,fragment", EXECUTOR_CASES, ids=[c[0] for c in EXECUTOR_CASES])
def test_executor_names_the_bad_checkpoint(source, nothing_built, run_prompt, models_dir, case, kind, fault,
                                           fragment):
    from realisid.host.comfy_host import PromptError
    from tests.test_nodes import node

    name = f"executor-{case}"
    folder = models_dir / "realisid"
    write_hostile(source, folder, name, kind, fault)
    try:
        with pytest.raises(PromptError) as caught:
            run_prompt(encoder_prompt(node("RealisIDModelLoader", model_name=f"{name}.safetensors")))
    finally:
        (folder / f"{name}.safetensors").unlink()
    message = str(caught.value)
    assert message.startswith("node 1 (RealisIDModelLoader) failed: ") and "CheckpointError: " in message, message
    assert f"{name}.safetensors" in message and fragment in message, message
    assert not pathlib.Path("/tmp/realisid_unpickled_checkpoint").exists()


@pytest.fixture(scope="module")
def host_iid(iid, models_dir):
    """A valid InstantID pair in the host's models/controlnet and models/instantid (the loader's folders)."""
    cn, ip = fi.write_instantid(models_dir, T.tiny_unet_config("sdxl"), controlnet_name="executor_cn.safetensors",
                                ip_name="executor_ip.bin")
    yield cn, ip
    cn.unlink()
    ip.unlink()


EXECUTOR_IID_CASES = [("controlnet", case, fragment) for case, fragment in CN_CASES] + [
    ("instantid", case, fragment) for case, fragment in IP_CASES]


@pytest.mark.parametrize("folder,case,fragment", EXECUTOR_IID_CASES, ids=[c[1] for c in EXECUTOR_IID_CASES])
def test_executor_names_the_bad_instantid_file(iid, host_iid, run_prompt, models_dir, folder, case, fragment):
    """Each hostile file in the folder the loader reads (a pickle in models/controlnet among them); the host
    reports InstantIDFileError naming that file and never the other one."""
    from realisid.host.comfy_host import PromptError
    from tests.test_nodes import node

    bad = (cn_bad if folder == "controlnet" else ip_bad)(iid, models_dir / folder, case)
    names = {"control_net_name": host_iid[0].name, "ip_adapter_name": host_iid[1].name,
             "control_net_name" if folder == "controlnet" else "ip_adapter_name": bad.name}
    try:
        with pytest.raises(PromptError) as caught:
            run_prompt(encoder_prompt(node("RealisIDInstantIDLoader", crop_size=16, **names)))
    finally:
        bad.unlink()
    message = str(caught.value)
    assert message.startswith("node 1 (RealisIDInstantIDLoader) failed: "), message
    assert "InstantIDFileError: " in message and bad.name in message and fragment in message, message
    good = host_iid[1 if folder == "controlnet" else 0].name
    assert good not in message.split("Expected")[0], message
    assert not pathlib.Path("/tmp/realisid_unpickled_instantid").exists()


@pytest.mark.parametrize("crop_frame", [NAN, INF, 0.5], ids=repr)
def test_executor_names_a_bad_instantid_crop_frame(host_iid, run_prompt, crop_frame):
    """crop_frame NaN passes the host's min/max checks (and 0.5 is refused by them): the message names it."""
    from realisid.host.comfy_host import PromptError
    from tests.test_nodes import node

    loader = node("RealisIDInstantIDLoader", control_net_name=host_iid[0].name, ip_adapter_name=host_iid[1].name,
                  crop_size=16, crop_frame=crop_frame)
    with pytest.raises(PromptError, match="crop_frame"):
        run_prompt(encoder_prompt(loader))


@pytest.mark.parametrize("fault", ["garbage", "html"])
def test_executor_names_the_unreadable_onnx_file(tmp_path, monkeypatch, run_prompt, fault):
    """A pack with a garbage .onnx file, picked in RealisID Face Analysis: the node fails with FaceModelFileError
    naming the file (onnxruntime's INVALID_PROTOBUF alone named nothing)."""
    pytest.importorskip("insightface")
    import sys

    import nodes as comfy_nodes
    from realisid.host.comfy_host import PromptError
    from tests.helpers import fake_insightface

    root = fake_insightface.build_fake_pack(tmp_path / "pack")
    victim = pathlib.Path(root) / "models" / "antelopev2" / "glintr100.onnx"
    victim.write_bytes(ONNX_FAULTS[fault](victim.read_bytes()))
    pack_paths = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["RealisIDFaceAnalysis"].__module__].paths
    monkeypatch.setattr(pack_paths, "insightface_root", lambda pack=None: root)
    prompt = encoder_prompt({"class_type": "RealisIDModelLoader",
                             "inputs": {"model_name": "tiny_realisid_sdxl.safetensors"}})
    prompt["3"]["inputs"]["backend"] = "insightface antelopev2"
    with pytest.raises(PromptError) as caught:
        run_prompt(prompt)
    message = str(caught.value)
    assert message.startswith("node 3 (RealisIDFaceAnalysis) failed: ") and "FaceModelFileError: " in message
    assert "glintr100.onnx is not a readable ONNX model" in message and "scrfd_10g_bnkps.onnx is not" not in message
