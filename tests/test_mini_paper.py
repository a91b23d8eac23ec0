"""A small slice of the paper protocol (issue 14) on the shipped Mini files: the harness's outputs are well formed
and its figures agree with a direct computation on the same images (the full protocol: `python -m realisid.mini
paper`, docs/results-mini.md)."""

import json
import math
import os

import numpy as np
import pytest
import torch

from realisid.mini import files, paper

needs_model = pytest.mark.skipif(not (files.REALISID_DIR / files.REALISID_FILE).is_file(),
                                 reason="the trained RealisID-Mini model is not in models/mini/realisid/")


def test_the_plan_gives_every_variant_the_same_cases_and_people_cells_to_full_strength_variants():
    variants = paper.variants_with(["five keypoints=realisid_mini_kps5.safetensors"])
    cases = paper.plan(2, seed=3, variants=variants, sides={"1/4": 0.25, "1/8": 0.125}, people=(1, 3))
    assert cases == paper.plan(2, seed=3, variants=variants, sides={"1/4": 0.25, "1/8": 0.125}, people=(1, 3))
    by_cell = {}
    for pc in cases:
        by_cell.setdefault((pc.case.cell, pc.case.seed), []).append(pc)
    assert len(by_cell) == 2 * 2 + 2 + 2 * 2  # identity cells, the driven cell, people cells
    for (cell, _), group in by_cell.items():
        names = [pc.variant.name for pc in group]
        expected = [v.name for v in variants if not cell.startswith("people") or v.strengths == "full"]
        assert names == expected, cell
        assert len({(pc.case.people, pc.case.caption, pc.truth) for pc in group}) == 1  # one case, every variant
        assert all(p.identity.index % 10 == 0 for p in group[0].case.people)  # held-out identities
        sides = {round(p.size * 256) for p in group[0].case.people}
        assert len(sides) == 1 and all(abs(f.side - p.size * 256) < 1e-9
                                       for f, p in zip(group[0].truth.people, group[0].case.people, strict=True))
    assert variants[-1].model == "realisid_mini_kps5.safetensors" and variants[-1].strengths == "full"
    with pytest.raises(ValueError, match="NAME=FILE"):
        paper.variants_with(["no-file"])


def test_the_bootstrap_interval_matches_the_normal_approximation_and_collapses_on_constants():
    rng = np.random.default_rng(0)
    values = rng.random(400) < 0.3
    f = paper.interval(values.astype(float), seed=1)
    half = 1.96 * math.sqrt(values.mean() * (1 - values.mean()) / len(values))  # independent reference
    assert f["n"] == 400 and f["mean"] == pytest.approx(values.mean())
    assert f["lo"] == pytest.approx(values.mean() - half, abs=0.01)
    assert f["hi"] == pytest.approx(values.mean() + half, abs=0.01)
    assert paper.interval([0.5] * 7) == {"n": 7, "mean": 0.5, "lo": 0.5, "hi": 0.5}
    assert paper.interval([float("nan"), 1.0])["n"] == 1 and paper.interval([])["n"] == 0


@pytest.fixture(scope="module")
def slice_run(pack_node_ids, tmp_path_factory):
    import folder_paths

    from realisid.mini import backend, family, judge

    family.register()
    root = tmp_path_factory.mktemp("mini_paper")
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_output_directory(str(root / "output"))
    variants = (paper.BUILTIN[0], paper.BUILTIN[3])  # the full model and the text-only base
    cases = paper.plan(1, seed=9, variants=variants, sides={"1/4": 0.25}, people=(2,))
    analyzer, judge_net, examples = backend.MiniFaceAnalyzer(), judge.MiniJudge(), {}
    rows = paper.run(cases, analyzer, judge_net, steps=4, examples=examples)
    return cases, rows, examples, analyzer, judge_net


def _hungarian(iou: list[list[float]], min_iou: float = 0.1) -> list[int | None]:
    """Each box's face by scipy's assignment on IoU (an independent matcher), None below min_iou."""
    from scipy.optimize import linear_sum_assignment

    out: list[int | None] = [None] * len(iou)
    if iou and iou[0]:
        rows, cols = linear_sum_assignment(-np.asarray(iou))
        for r, c in zip(rows, cols, strict=True):
            out[r] = int(c) if iou[r][c] >= min_iou else None
    return out


@needs_model
def test_the_slice_rows_agree_with_a_direct_reading_of_the_same_images(slice_run):
    from realisid.evaluate import metrics
    from realisid.mini import behaviour
    from realisid.mini.judge import attribute_match

    cases, rows, examples, analyzer, judge_net = slice_run
    generated = [r for r in rows if r["variant"] != paper.GROUND_TRUTH]
    assert len(generated) == sum(len(pc.case.people) for pc in cases)
    truths = [r for r in rows if r["variant"] == paper.GROUND_TRUTH]
    assert len(truths) == sum(len(pc.case.people) for pc in cases if pc.variant.name == "RealisID")
    for pc in cases:
        case, image = pc.case, examples[(pc.case.cell, pc.variant.name)]["image"]
        mine = [r for r in generated if r["cell"] == case.cell and r["variant"] == pc.variant.name]
        references = behaviour.references_for(case)
        faces = analyzer.analyze(image)
        boxes = behaviour.requested_boxes(case)
        assigned = _hungarian([[metrics.box_iou(f.square_box(), box) for f in faces] for box in boxes])
        for row, person, ref, box, best in zip(mine, case.people, references, boxes, assigned, strict=True):
            found = best is not None
            assert row["found"] == found
            read_box = faces[best].square_box() if found else box
            reading = judge_net.read([image], [read_box])[0]
            assert row["identity"] == pytest.approx(attribute_match(reading, person.identity))
            if found:  # the cosine, computed here with numpy from the two embeddings
                a, b = analyzer.analyze(ref.image)[0].embedding, faces[best].embedding
                cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                assert row["cosine"] == pytest.approx(cos, abs=1e-5)
            else:
                assert math.isnan(row["cosine"])
        if case.driven and mine[0]["found"]:
            assert -1.0 <= mine[0]["copy_paste"] <= 1.0


@needs_model
def test_the_slice_summary_and_report_are_well_formed(slice_run, tmp_path):
    cases, rows, examples, _, _ = slice_run
    summary = paper.summarise(rows)
    assert set(summary["identity"]) == {"RealisID", "text only (base)", paper.GROUND_TRUTH}
    for variant, figures in summary["identity"].items():
        cell = [r["identity"] for r in rows if r["cell"] == "identity 1/4" and r["variant"] == variant]
        assert figures["1/4"]["n"] == len(cell) and figures["1/4"]["mean"] == pytest.approx(np.mean(cell))
        assert figures["1/4"]["lo"] <= figures["1/4"]["mean"] <= figures["1/4"]["hi"]
    assert summary["identity"][paper.GROUND_TRUTH]["1/4"]["mean"] >= 0.8  # the world's own render reads right
    assert set(summary["people"]["RealisID"]) == {"2 identity", "2 bound", "2 found"}
    assert set(summary["pose"]) == {"RealisID", "text only (base)"}
    paper.plot_identity_vs_size(summary, tmp_path / "identity_vs_size.png")
    paper.examples_grid(examples, ["identity 1/4"], ["RealisID", "text only (base)"], tmp_path / "examples.png")
    doc = tmp_path / "results.md"
    paper.write_doc(summary, doc, ".", "python -m realisid.mini paper --n 1", seed=9, n=1, seconds=12.0)
    text = doc.read_text()
    for heading in ("## Reading", "## Identity vs face side", "## Pose and expression", "## One, two and three",
                    "## Location"):
        assert heading in text
    assert "| RealisID | " in text and "(n=1)" in text
    import cv2

    grid = cv2.imread(str(tmp_path / "examples.png"))
    assert grid.shape[1] == 4 * grid.shape[0]  # reference, layout and two variants, one row
    assert (tmp_path / "identity_vs_size.png").stat().st_size > 10_000


def test_the_baselines_local_twin_is_its_network_run_on_the_face_crop(tmp_path):
    """The public-weights trick: the InstantID-style baseline's full-latent network becomes the local branch,
    weights unchanged, with its crop frame declared (and read by the conditioning); other models are refused."""
    from realisid import checkpoint, control
    from realisid.instantid import model as instantid
    from tests.helpers.tiny_realisid import tiny_realisid_model

    baseline = tiny_realisid_model(with_local=False, global_hint="face_hint")
    source, twin_path = tmp_path / "baseline.safetensors", tmp_path / "twin.safetensors"
    checkpoint.save_realisid(baseline, str(source))
    paper.local_twin(source, twin_path, 2.5)
    twin = checkpoint.load_realisid(str(twin_path))
    assert twin.global_net is None and twin.config["global"] is None
    assert twin.config["local"]["hint_channels"] == 3 and instantid.crop_frame(twin) == 2.5
    ours, theirs = twin.local_net.state_dict(), baseline.global_net.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(torch.equal(a, b) for a, b in zip(twin.projector.state_dict().values(),
                                                 baseline.projector.state_dict().values(), strict=True))
    assert instantid.crop_frame(baseline) == 1.0  # trained models keep their own framing
    assert not control.restores_noise(twin) and not control.restores_noise(baseline)
    paper.local_twin(source, tmp_path / "restored.safetensors", 2.0, restore_noise=True)
    assert control.restores_noise(checkpoint.load_realisid(str(tmp_path / "restored.safetensors")))
    checkpoint.save_realisid(tiny_realisid_model(with_local=False), str(tmp_path / "mask.safetensors"))
    with pytest.raises(ValueError, match="global-only face-hint"):
        paper.local_twin(tmp_path / "mask.safetensors", tmp_path / "bad.safetensors", 1.0)


def _figure(mean, half=0.02, n=8):
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


@pytest.mark.parametrize("full_at_7, verdict", [(0.45, "above"), (0.20, "below"), (0.31, "overlapping")])
def test_the_equal_budget_reading_follows_the_figures(full_at_7, verdict):
    full, baseline, kps5 = paper.TRAINED["full_1765"], paper.TRAINED["instantid_style"], paper.TRAINED["kps5"]
    pose = {"expression = driver": _figure(0.5), "yaw error (deg)": _figure(8.0, 1.0), "copy-paste CP": _figure(0.0)}
    summary = {"identity": {full: {"1/4": _figure(0.5), "1/7": _figure(full_at_7)},
                            baseline: {"1/4": _figure(0.4), "1/7": _figure(0.3)},
                            kps5: {"1/4": _figure(0.5), "1/7": _figure(0.4)}},
               "pose": {full: pose, kps5: {**pose, "yaw error (deg)": _figure(15.0, 1.0)}},
               "people": {}, "location": {}}
    lines = paper._equal_budget_reading(summary)
    size_line = next(line for line in lines if line.startswith("At an equal budget"))
    assert f"at 1/7 RealisID is {verdict} the baseline" in size_line
    assert f"RealisID 0.500 -> {full_at_7:.3f} (keeps {full_at_7 / 0.5:.0%})" in size_line
    pose_line = next(line for line in lines if line.startswith("68 landmarks vs 5 keypoints"))
    assert "yaw error 8.0 vs 15.0 deg (below)" in pose_line
    no_variants = paper._equal_budget_reading({"identity": {}, "pose": {}, "people": {}, "location": {}})
    assert len(no_variants) == 1 and "not measured" in no_variants[0]


def test_the_plot_groups_each_variant_into_one_panel():
    twin = paper.twin_name(2.0, True)
    names = ["RealisID", "text only (base)", paper.GROUND_TRUTH, paper.TRAINED["full_1765"],
             paper.TRAINED["instantid_style"], paper.TRAINED["local_only"], twin]
    groups = dict(paper.plot_groups(names))
    assert list(groups.values()) == [["RealisID", "text only (base)"],
                                     [paper.TRAINED["full_1765"], paper.TRAINED["instantid_style"],
                                      paper.TRAINED["local_only"]],
                                     [paper.TRAINED["instantid_style"], twin]]
    assert twin == "InstantID-style as the local branch, frame 2, noise restored"
    assert len(paper.plot_groups(["RealisID", paper.GROUND_TRUTH])) == 1  # empty panels are left out


def test_the_reading_compares_each_frame_with_and_without_the_restored_noise():
    full, baseline = paper.TRAINED["full_1765"], paper.TRAINED["instantid_style"]
    ident = {full: {"1/4": _figure(0.5), "1/7": _figure(0.4)}, baseline: {"1/4": _figure(0.4), "1/7": _figure(0.3)},
             paper.twin_name(2.0): {"1/4": _figure(0.4), "1/7": _figure(0.2)},
             paper.twin_name(2.0, True): {"1/4": _figure(0.4), "1/7": _figure(0.35)},
             paper.twin_name(1.0): {"1/4": _figure(0.4), "1/7": _figure(0.25)}}  # frame 1 has no restored twin here
    lines = paper._equal_budget_reading({"identity": ident, "pose": {}, "people": {}, "location": {}})
    (restore,) = [line for line in lines if line.startswith("Restoring")]
    assert restore.endswith("frame 2 0.200 without, 0.350 with (above).")
    trick = next(line for line in lines if line.startswith("The public-weights trick"))
    assert "frame 2, noise restored: 0.400 -> 0.350 (keeps 87%), above the baseline itself" in trick


def test_workers_give_the_rows_and_examples_of_one_process(slice_run, tmp_path):
    """`--workers`: the same cases split between spawned processes come back as one process gives them, in plan
    order (same torch threads as this process, so the same arithmetic)."""
    import folder_paths

    cases, rows, examples, _, _ = slice_run
    setup = paper.WorkerSetup(os.path.dirname(folder_paths.__file__), (), str(tmp_path), torch.get_num_threads())
    shares = paper.split_cases(cases, 2)
    assert [len(s) for s in shares] == [3, 2] and sorted(sum(shares, [])) == list(range(len(cases)))
    found: dict = {}
    parallel = paper.run_in_workers(cases, setup, 2, steps=4, examples=found)
    as_text = [json.dumps(r, sort_keys=True, default=str) for r in rows]  # NaN equals NaN in text only
    assert [json.dumps(r, sort_keys=True, default=str) for r in parallel] == as_text
    assert found.keys() == examples.keys()
    for key, example in examples.items():
        assert np.array_equal(found[key]["image"], example["image"]), key


def test_an_ip_adapter_variant_routes_the_guiders_model_through_the_regional_attention():
    from realisid.mini import behaviour
    from realisid.mini.identity import random_identity

    rng = np.random.default_rng(0)
    people = (behaviour._single(random_identity(rng, "held_out"), 0.25, rng),)
    case = behaviour.Case("identity 1/4", "full", people, "a person", 3, False)
    plain = behaviour.case_prompt(case, ["ref.png"], model_name="variant.safetensors")
    with_ip = behaviour.case_prompt(case, ["ref.png"], model_name="variant.safetensors", ip_weight=0.75)
    added = set(with_ip) - set(plain)
    assert len(added) == 1
    node = with_ip[added.pop()]
    composite = next(n for n in plain.values() if n["class_type"] == "RealisIDMultiFaceComposite")["inputs"]
    guider = next(n for n in with_ip.values() if n["class_type"] == "RealisIDGuider")["inputs"]
    plain_guider = next(n for n in plain.values() if n["class_type"] == "RealisIDGuider")["inputs"]
    assert node["class_type"] == "RealisIDInstantIDAttention"
    assert node["inputs"]["model"] == plain_guider["model"] and node["inputs"]["weight"] == 0.75
    assert [node["inputs"][k] for k in ("instantid", "faces", "layout")] == [
        composite["realisid_model"], composite["faces"], composite["layout"]]
    assert guider["model"] == [next(k for k in with_ip if k not in plain), 0]
    assert {k: v for k, v in with_ip.items() if k in plain and v["class_type"] != "RealisIDGuider"} == {
        k: v for k, v in plain.items() if v["class_type"] != "RealisIDGuider"}


@pytest.fixture
def variants_listed():
    """The committed variants folder listed by the RealisID loader for one test (as `paper` lists it)."""
    import folder_paths

    paths = folder_paths.folder_names_and_paths["realisid"][0]
    before = list(paths)
    folder_paths.add_model_folder_path("realisid", str(files.VARIANTS_DIR))
    try:
        yield
    finally:
        paths[:] = before


def test_the_committed_ip_adapter_variant_acts_through_the_nodes_and_leaves_the_base_alone(slice_run,
                                                                                           variants_listed):
    """The InstantID-style + IP-Adapter variant: its IP-Adapter changes the image (a MODEL clone carries it), and a
    run without it afterwards gives the image of a run without it before (the base MODEL was not patched)."""
    from realisid.mini import behaviour

    name = files.variant_file("instantid_style_ip")
    assert (files.VARIANTS_DIR / name).is_file()
    case = slice_run[0][0].case
    references = behaviour.references_for(case)
    staged = [behaviour.stage_image(r.image) for r in references]

    def image(ip_weight):
        return behaviour.generate(behaviour.case_prompt(case, staged, model_name=name, steps=4, ip_weight=ip_weight))

    before, with_ip, after = image(None), image(1.0), image(None)
    assert np.array_equal(before, after)
    assert np.abs(with_ip.astype(int) - before.astype(int)).max() > 8
