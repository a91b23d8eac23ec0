"""Behavioural tests of the shipped RealisID-Mini model (issue 13): seeded, on CPU, through the real nodes.

Each test states its threshold (realisid.mini.behaviour.THRESHOLDS, the issue's); the model card states the same
figures measured with more cases (`python -m realisid.mini behaviour`). A threshold the shipped model does not
reach is marked xfail(strict=True) with the measured figure: the test runs and reports, and turns into a failure
the day the model passes, so the mark cannot outlive the weakness it records.
"""

import json

import numpy as np
import pytest

from realisid.mini import behaviour, files

needs_model = pytest.mark.skipif(not (files.REALISID_DIR / files.REALISID_FILE).is_file(),
                                 reason="the trained RealisID-Mini model is not in models/mini/realisid/")

N = 8  # cases per cell: 8 faces at 1/4 and at 1/7 (full and text-only), 8 driven faces, 8 two- and 8 three-person images
SAMPLING_STEPS = 10
T = behaviour.THRESHOLDS


def _perfect_render(case, references, driver=None, swap=False):
    """What an ideal generator draws for `case`: its people at their boxes, each with its reference's identity
    (`swap`: the identities rotated one box along) and the driver's (or reference's own) pose and expression."""
    from realisid.mini import world

    people = []
    for i, person in enumerate(case.people):
        target = driver.truth if (driver is not None and i == 0) else references[i].truth
        identity = case.people[(i + 1) % len(case.people)].identity if swap else person.identity
        people.append(world.PersonSpec(identity=identity, cx=person.x * world.SIZE, cy=person.y * world.SIZE,
                                       side=person.size * world.SIZE, pose=target.pose, expression=target.expression))
    return world.render_scene(world.SceneSpec(people=tuple(people), place="park", seed=case.seed)).image


@pytest.fixture(scope="module")
def scorers():
    from realisid.mini import backend, judge

    return backend.MiniFaceAnalyzer(), judge.MiniJudge()


def test_the_plan_is_seeded_and_variants_share_their_cases():
    a, b = behaviour.plan(3, seed=1), behaviour.plan(3, seed=1)
    assert a == b and a != behaviour.plan(3, seed=2)
    quarter = [c for c in a if c.cell == "identity 1/4"]
    assert len(quarter) == 3 * len(behaviour.VARIANTS)
    by_people = {}
    for c in quarter:
        by_people.setdefault(c.people, set()).add(c.variant)
    assert all(v == set(behaviour.VARIANTS) for v in by_people.values())  # each placement in every variant
    for c in a:
        boxes = behaviour.requested_boxes(c)
        assert (boxes >= 0).all() and (boxes <= 256).all()  # every box inside the image
        assert all(p.identity.index % 10 == 0 for p in c.people)  # held-out identities only


def test_an_ideal_generator_scores_at_the_ceiling_and_a_swapped_one_fails_binding(scorers):
    """The scoring, against renders whose truth is known: ideal images score identity near the judge's ceiling,
    every face located and bound, the driver's expression; the same images with identities rotated between the
    boxes are located but not bound."""
    analyzer, judge = scorers
    cases = behaviour.plan(4, seed=3, variants=("full",))
    rows, swapped = [], []
    for case in cases:
        refs = behaviour.references_for(case)
        driver = behaviour.driver_for(case, refs[0]) if case.driven else None
        rows += behaviour.score_case(case, _perfect_render(case, refs, driver), refs, driver, analyzer, judge)
        if len(case.people) > 1:
            swapped += behaviour.score_case(case, _perfect_render(case, refs, swap=True), refs, None, analyzer, judge)
    gates = json.loads((files.MODELS_DIR / "gates.json").read_text())
    summary = behaviour.summarise(rows, gates, behaviour.identities_of(cases))
    for side in behaviour.SIDES:
        cell = summary["identity"][f"full {side}"]
        assert cell["ratio"] >= 0.9, cell
        assert cell["shuffled"] < cell["attribute_match"] - 0.3, cell  # another person is far from a match
    assert summary["location"]["rate"] >= 0.95, summary["location"]
    assert summary["pose"]["expression_rate"] >= 0.75 and summary["pose"]["copy_paste_rate"] <= 0.25
    assert summary["pose"]["yaw_error_deg"] <= 12, summary["pose"]
    for count in ("2", "3"):
        assert summary["binding"][count]["rate"] >= 0.9, summary["binding"]
    assert np.mean([r["bound"] for r in swapped]) <= 0.2
    assert np.mean([r["iou"] >= behaviour.THRESHOLDS["location_iou"] for r in swapped]) >= 0.95


@pytest.fixture(scope="module")
def measured(pack_node_ids, tmp_path_factory):
    """One seeded run of the full model's cells and the text-only base (the ablations are the card's, not CI's)."""
    import folder_paths

    from realisid.mini import backend, family, judge

    family.register()
    root = tmp_path_factory.mktemp("mini_behaviour")
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_output_directory(str(root / "output"))
    cases = behaviour.plan(N, seed=5, variants=("full", "text_only"))
    # 10 sampling steps, not the workflows' 20: CI time (the card's figures use 20)
    rows, seconds = behaviour.run_cases(cases, backend.MiniFaceAnalyzer(), judge.MiniJudge(), steps=SAMPLING_STEPS)
    gates = json.loads((files.MODELS_DIR / "gates.json").read_text())
    return behaviour.summarise(rows, gates, behaviour.identities_of(cases))


@needs_model
@pytest.mark.xfail(strict=True, reason="measured 0.59 of the ceiling here (text-only base 0.28; card, n=12: 0.52, text-only 0.36): the 9,965-step branches on base stage 2 carry part of the identity")
def test_full_model_keeps_identity_at_one_quarter(measured):
    cell = measured["identity"]["full 1/4"]
    assert cell["n"] == N
    assert cell["ratio"] >= T["identity_ratio_1/4"], cell


@needs_model
@pytest.mark.xfail(strict=True, reason="measured 0.47 of the ceiling here (text-only 0.27; card, n=12: 0.57, text-only 0.27)")
def test_full_model_keeps_identity_at_one_seventh(measured):
    cell = measured["identity"]["full 1/7"]
    assert cell["ratio"] >= T["identity_ratio_1/7"], cell


@needs_model
def test_text_only_base_is_near_chance(measured):
    """The base never sees the reference: its faces match the reference no better than another person's
    (measured chance) would, up to sampling noise of 8 faces x 9 attributes."""
    for label in behaviour.SIDES:
        cell = measured["identity"][f"text_only {label}"]
        assert abs(cell["attribute_match"] - cell["shuffled"]) <= 0.1, (label, cell)


@needs_model
@pytest.mark.xfail(strict=True, reason="measured 0.81 of 64 faces at IoU >= 0.6 here (card: 0.89 of 96)")
def test_faces_land_in_their_boxes(measured):
    assert measured["location"]["rate"] >= T["location_rate"], measured["location"]


@needs_model
@pytest.mark.xfail(strict=True, reason="measured 0.38 here (card, n=12: 0.25, chance)")
def test_driven_face_takes_the_drivers_expression(measured):
    pose = measured["pose"]
    assert pose["n"] == N
    assert pose["expression_rate"] >= T["expression_rate"], pose


@needs_model
def test_driven_face_turns_its_head_like_the_driver(measured):
    """The landmark hint carries the head pose: mean absolute yaw error against the driver's."""
    pose = measured["pose"]
    assert pose["yaw_error_deg"] <= T["yaw_error_deg"], pose


@needs_model
@pytest.mark.xfail(strict=True, reason="measured 0.25 here (card: 0.33)")
def test_undriven_face_keeps_the_references_expression(measured):
    cell = measured["pose_without_driver"]
    assert cell["expression_rate"] >= T["expression_rate"], cell


@needs_model
# two people: 15 of 16 faces here (0.94) meet the threshold, while the card's 24 faces at 20 steps give 0.75, so
# this pass is within the noise of 16 faces, not a threshold the model clearly meets
@pytest.mark.parametrize("count", ["2", pytest.param("3", marks=pytest.mark.xfail(
    strict=True, reason="measured 0.79 (3 people) here (card: 0.61): binding follows the partial identity"))])
def test_each_box_binds_its_own_reference(measured, count):
    cell = measured["binding"][count]
    assert cell["n"] == N * int(count)
    assert cell["rate"] >= T["binding_rate"], cell


@needs_model
def test_plain_sampling_is_bit_identical_before_and_after_a_realisid_graph_on_the_same_model(pack_node_ids):
    """One loaded Mini base (one MODEL object): plain sampling, then the RealisID nodes (encoder, layout, Composite,
    Guider) sampling with that MODEL, then plain sampling again. The two plain latents are bit-identical, so the
    graph patched nothing into the MODEL it was given; the RealisID latent differs, so the graph did act."""
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import torch

    import nodes

    nodes_by_id = nodes.NODE_CLASS_MAPPINGS

    model, clip = comfy.sd.load_checkpoint_guess_config(str(files.CHECKPOINTS_DIR / files.BASE_FILE),
                                                        output_vae=True, output_clip=True)[:2]
    encode = nodes.CLIPTextEncode()
    pos = encode.encode(clip, "one person, close-up portrait, in a park, wearing a red shirt")[0]
    neg = encode.encode(clip, "")[0]
    latent = torch.zeros(1, 16, 32, 32)
    noise = comfy.sample.prepare_noise(latent, 3)

    def plain():
        return comfy.sample.sample(model, noise, 6, 4.0, "euler", "normal", pos, neg, latent, seed=3, disable_pbar=True)

    before = plain()
    realisid_model = nodes_by_id["RealisIDModelLoader"].execute(files.REALISID_FILE)[0]
    analysis = nodes_by_id["RealisIDFaceAnalysis"].execute("mini (RealisID-Mini world, bundled)", "CPU")[0]
    case = behaviour.plan(1, seed=9, variants=("full",), people=(), pose=False)[0]
    reference = torch.from_numpy(behaviour.references_for(case)[0].image / 255.0).float()[None]
    faces = nodes_by_id["RealisIDFaceEncoder"].execute(reference, analysis, realisid_model, "largest", 0, "error",
                                                      "each image is a different person", None)[0]
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.35, 0.3)[0]
    rpos, rneg, _ = nodes_by_id["RealisIDMultiFaceComposite"].execute(pos, neg, realisid_model, faces, layout, 1.0,
                                                                      1.0, 0.0, 1.0, 0, "per_person", 0.0)
    guider = nodes_by_id["RealisIDGuider"].execute(model, rpos, rneg, 4.0, 3.0, 0.2)[0]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 6)
    with_realisid = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=3,
                                  disable_pbar=True)
    after = plain()
    assert not torch.allclose(with_realisid, before)
    assert torch.equal(after, before)
