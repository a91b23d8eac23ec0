"""RealisID-Mini weight files and the readers built on them, with random networks written at test time
(the trained files are tested against the model card once they ship)."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from realisid.mini import backend, facenets, files, gates, judge, world


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    torch.manual_seed(0)
    backend.save_face_models(folder / "faces.safetensors", facenets.Detector().eval(), facenets.FaceNet().eval())
    judge.save_judge(folder / "judge.safetensors", facenets.Judge().eval())
    return folder


def test_files_are_fp16_and_round_trip(random_files):
    state = safetensors.torch.load_file(str(random_files / "faces.safetensors"))
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    net = facenets.Judge()
    info = files.load_networks(random_files / "judge.safetensors", "judge", {"judge": net})
    assert info["kind"] == "judge" and not net.training
    assert next(net.parameters()).dtype == torch.float32


def test_a_file_of_another_kind_or_shape_is_refused(random_files, tmp_path):
    with pytest.raises(ValueError, match="expected a RealisID-Mini 'faces' file"):
        backend.MiniFaceAnalyzer(random_files / "judge.safetensors")
    with pytest.raises(FileNotFoundError, match="models/mini"):
        judge.MiniJudge(tmp_path / "absent.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    small = torch.nn.Linear(2, 2)
    files.save_networks(wrong, {"judge": small}, "judge")
    with pytest.raises(ValueError, match="do not match"):
        judge.MiniJudge(wrong)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        judge.MiniJudge(tmp_path / "junk.safetensors")


def test_truncated_data_and_nan_weights_are_refused_by_file_name(random_files, tmp_path):
    """A file whose header is intact but whose data is cut short, or whose weights are NaN, fails at load with
    the file's name, not a raw safetensors error or a judge that reads NaN."""
    good = (random_files / "judge.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) - 1000])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable .safetensors file"):
        judge.MiniJudge(cut)
    net = facenets.Judge()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    poisoned = tmp_path / "nan.safetensors"
    judge.save_judge(poisoned, net.eval())
    with pytest.raises(ValueError, match="nan.safetensors: 1 tensor\\(s\\) hold NaN"):
        judge.MiniJudge(poisoned)


def test_readers_return_the_interfaces_contracts(random_files):
    scene = world.random_scene(11, n_people=2)
    analyzer = backend.MiniFaceAnalyzer(random_files / "faces.safetensors", threshold=0.0)
    records = analyzer.analyze(scene.image, image_index=3)
    assert records, "threshold 0 keeps every local maximum of the heat map"
    rec = records[0]
    assert rec.space == backend.SPACE and rec.embedding.shape == (facenets.EMBEDDING_DIM,)
    assert rec.landmarks68.shape == (68, 2) and rec.kps.shape == (5, 2) and rec.image_index == 3
    assert rec.image_size == (256, 256)
    np.testing.assert_allclose(rec.kps[2], rec.landmarks68[30], atol=1e-4)
    readings = judge.MiniJudge(random_files / "judge.safetensors").read([scene.image] * 2,
                                                                        [f.box for f in scene.faces])
    assert len(readings) == 2 and set(readings[0]["attributes"]) == set(gates.ATTRIBUTES)
    assert readings[0]["expression"] in ("neutral", "smile", "surprise", "frown")


def test_roc_auc_against_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 30)
    pos[:3] = neg[:3]  # some ties
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert gates.roc_auc(pos, neg) == pytest.approx(brute)


def test_judge_scores_count_what_they_say():
    scenes = gates.single_person_scenes(1 / 4, 4, seed=1)
    truths = [s.faces[0] for s in scenes]
    perfect = [{"attributes": t.identity.as_dict(), "confidence": {k: 1.0 for k in gates.ATTRIBUTES},
                "expression": t.expression, "pose": t.pose} for t in truths]
    scores = gates.score_readings(perfect, truths)
    assert all(v == 1.0 for v in scores.attributes.values()) and scores.expression == 1.0
    assert scores.pose_mae == {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}
    wrong = [dict(r, attributes={**r["attributes"], "skin": (r["attributes"]["skin"] + 1) % 6}) for r in perfect]
    assert gates.score_readings(wrong, truths).attributes["skin"] == 0.0
    assert json.dumps(scores.as_dict())


def test_sample_grid_keeps_each_image_in_its_cell(tmp_path):
    """The card's picture of the base: images in rows of `columns`, in order, the last row padded with white."""
    from PIL import Image

    images = [np.full((4, 6, 3), v, np.uint8) for v in (10, 20, 30)]
    gates.save_grid(images, str(tmp_path / "grid.png"), columns=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (8, 12, 3)
    assert (grid[:4, :6] == 10).all() and (grid[:4, 6:] == 20).all() and (grid[4:, :6] == 30).all()
    assert (grid[4:, 6:] == 255).all()
    with pytest.raises(ValueError, match="at least one image"):
        gates.save_grid([], str(tmp_path / "empty.png"), columns=2)


@pytest.mark.parametrize(("found", "verdict"), [(0.92, "pass"), (0.85, "FAIL")])
def test_card_judges_the_base_gate_at_ninety_percent(found, verdict):
    from realisid.mini import card

    gates = {"base": {"n": 200, "count_correct": found, "judge_confidence_samples": 0.7,
                      "judge_confidence_renders": 0.98, "seconds_per_image": 1.5}}
    (line,) = card._verdicts(gates)
    assert f"**{verdict}**" in line and "200 text-only samples" in line and "1.50 s per image" in line


def test_card_lists_identity_use_per_model_and_recipe():
    from realisid.mini import card

    lines = card.identity_use_section({"m, other": {"n": 64, "face_mse_own": 0.3, "face_mse_other": 0.4,
                                                    "gap": 0.25, "win_rate": 0.875}})
    assert "| m, other | 64 | 0.300 | 0.400 | 25.0 % | 0.875 |" in lines


def test_export_realisid_takes_the_newest_step_in_fp16_with_its_training_record(models_dir, tmp_path):
    """`python -m realisid.mini export realisid`: the newest step file of a fit folder, fp16, still a RealisID file,
    its training record readable by the card; a file without a record is refused, naming the way to get one."""
    from realisid import checkpoint
    from realisid.mini import card, cli
    from realisid.train.outputs import write_realisid

    model = checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors"))
    work = tmp_path / "fit"
    for step in (5, 10):
        write_realisid(model.nets.state_dict(), model.config, work / f"realisid-step{step:07d}.safetensors",
                       torch.float32, {"steps": step, "seconds": 2.0 * step, "seed": 1, "machine": "m"})
    out = tmp_path / "realisid_mini.safetensors"
    cli._export_realisid(str(work), out)
    assert {v.dtype for v in safetensors.torch.load_file(str(out)).values() if v.is_floating_point()} == {torch.float16}
    assert files.read_info(out, "realisid")["training"]["realisid"] == {"steps": 10, "seconds": 20.0, "seed": 1,
                                                                       "machine": "m"}
    assert checkpoint.load_realisid(str(out)).config == model.config
    later = tmp_path / "fit2"  # a run warm-started from `out` (fit --init): its stages, then this run's
    write_realisid(model.nets.state_dict(), model.config, later / "realisid-step0000004.safetensors", torch.float32,
                   {"steps": 4, "seconds": 8.0, "seed": 2, "machine": "m"})
    continued = tmp_path / "continued.safetensors"
    cli._export_realisid(str(later), continued, continues=str(out))
    assert files.read_info(continued, "realisid")["training"] == {
        "realisid": {"steps": 10, "seconds": 20.0, "seed": 1, "machine": "m"},
        "realisid stage 2": {"steps": 4, "seconds": 8.0, "seed": 2, "machine": "m"}}
    write_realisid(model.nets.state_dict(), model.config, work / "realisid-final.safetensors", torch.float32,
                   {"steps": 12, "seconds": 24.0, "seed": 1, "machine": "m"})  # --steps 12, --save-every 5
    cli._export_realisid(str(work), out)
    assert files.read_info(out, "realisid")["training"]["realisid"]["steps"] == 12  # the last step, not step 10
    rows = card._training_rows(files.read_info(continued, "realisid"))
    assert [r.split(" | ")[:2] for r in rows] == [["| realisid", "10"], ["| realisid stage 2", "4"]]
    bare = tmp_path / "bare"
    bare.mkdir()
    checkpoint.save_realisid(model, str(bare / "realisid-step0000003.safetensors"))
    with pytest.raises(SystemExit, match="no 'realisid_training' record"):
        cli._export_realisid(str(bare), out)
