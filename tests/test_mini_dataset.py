"""The Mini training set on disk and its "other render" references through `realisid.train prepare`."""

import json

import cv2
import numpy as np
import pytest
import safetensors.numpy

from realisid.mini import dataset, world

ARGS = ["--backend", "mini", "--size", "256", "--detect-size", "256", "--min-face", "8", "--min-score", "0.4",
        "--hint-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return dataset.write_scenes(tmp_path_factory.mktemp("scenes"), n=3, seed=4)


def test_scenes_are_single_training_identities_with_another_render_of_the_same_person(scenes):
    rows = [json.loads(line) for line in scenes.read_text().splitlines()]
    assert len(rows) == 3
    for i, row in enumerate(rows):
        rng = np.random.default_rng([4, 6007, i])
        spec = world.random_spec(rng, n_people=1, split="train")
        target = cv2.cvtColor(cv2.imread(str(scenes.parent / row["image"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(target, world.render_scene(spec).image)  # deterministic in (seed, index)
        assert row["caption"] == world.caption(spec) and not spec.people[0].identity.held_out
        reference = dataset.reference_scene(spec.people[0].identity, rng)
        np.testing.assert_array_equal(cv2.imread(str(scenes.parent / row["reference"]))[..., ::-1], reference.image)
        assert reference.faces[0].identity == spec.people[0].identity and not np.array_equal(reference.image, target)
    own = [json.loads(line) for line in (scenes.parent / dataset.MANIFEST_SELF).read_text().splitlines()]
    assert own == [{k: v for k, v in row.items() if k != "reference"} for row in rows]  # the "self" recipe
    before = scenes.read_text()
    assert dataset.write_scenes(scenes.parent, n=3, seed=4).read_text() == before  # resumable, same lines


def test_a_scenes_folder_refuses_another_seed_or_split_instead_of_mixing_them(tmp_path):
    """Resuming keeps written images: another seed into the same folder would pair them with new captions."""
    folder = tmp_path / "scenes"
    manifest = dataset.write_scenes(folder, n=2, seed=4)
    before = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    for seed, split in ((5, "train"), (4, "held_out")):
        with pytest.raises(ValueError, match=r"holds scenes of .*'seed': 4.*choose another --out"):
            dataset.write_scenes(folder, n=2, seed=seed, split=split)
    assert {p.name: p.read_bytes() for p in (folder / "images").iterdir()} == before  # nothing overwritten
    assert json.loads(manifest.read_text().splitlines()[0])["caption"] == world.caption(
        world.random_spec(np.random.default_rng([4, 6007, 0]), n_people=1, split="train"))
    (folder / dataset.SETTINGS).unlink()  # a folder from before the settings record: its seed is unknown
    with pytest.raises(ValueError, match="seed and split are unknown"):
        dataset.write_scenes(folder, n=2, seed=4)


def test_prepare_takes_the_identity_from_the_reference_and_the_rest_from_the_target(scenes, tmp_path,
                                                                                     pack_node_ids):
    from realisid.mini.backend import MiniFaceAnalyzer
    from realisid.train.cli import main

    out = tmp_path / "cache"
    assert main(["prepare", "--manifest", str(scenes), "--out", str(out), *ARGS]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["reference"] for r in rows} == {"other"}
    analyzer = MiniFaceAnalyzer()
    for row in rows:
        data = safetensors.numpy.load_file(str(out / row["file"]))
        reference = cv2.imread(str(scenes.parent / row["key"].replace("images/", "references/")))[..., ::-1]
        target = cv2.imread(str(scenes.parent / row["key"]))[..., ::-1]
        (ref_face,), (target_face,) = analyzer.analyze(np.ascontiguousarray(reference)), analyzer.analyze(
            np.ascontiguousarray(target))
        np.testing.assert_allclose(data["embedding"], ref_face.embedding, atol=1e-5)
        assert np.abs(data["embedding"] - target_face.embedding).max() > 1e-2
        # location and landmarks are the target's: its box (square, fractions of the 256 px image)
        box = np.asarray(row["box"])
        centre = [(target_face.box[0] + target_face.box[2]) / 512, (target_face.box[1] + target_face.box[3]) / 512]
        np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], centre, atol=0.02)


def test_a_reference_without_a_face_skips_its_sample(scenes, tmp_path, pack_node_ids):
    from realisid.train.cli import main

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    row = json.loads(scenes.read_text().splitlines()[0])
    (folder / row["image"]).write_bytes((scenes.parent / row["image"]).read_bytes())
    cv2.imwrite(str(folder / "blank.png"), np.full((256, 256, 3), 128, np.uint8))
    manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps({**row, "reference": "blank.png"}) + "\n")
    out = tmp_path / "cache"
    assert main(["prepare", "--manifest", str(manifest), "--out", str(out), *ARGS]) == 0
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"key": row["image"], "reason": "no_face"}]
