"""Face Analysis and Face Encoder: reference photos -> encoded persons in the RealisID model's identity space."""

import logging

import comfy.clip_vision
import numpy as np
import torch
from comfy_api.latest import io

from realisid import drawing, identity_sources, validation
from realisid.checkpoint import RealisIDModel as RealisIDModelClass
from realisid.faces import NO_FACE_POLICIES, SELECT_MODES, apply_no_face_policy, select_faces
from realisid.layout import MAX_FACES

from . import paths
from .types import FaceAnalyzer, Faces, RealisIDModel

log = logging.getLogger(__name__)
CATEGORY = "RealisID/faces"
EMBEDDED = "embedded (MTCNN + dlib, offline)"
MINI = "mini (RealisID-Mini world, bundled)"
BACKENDS = [EMBEDDED, "insightface antelopev2", "insightface buffalo_l", MINI]
PROVIDERS = ["CPU", "CUDA", "ROCM", "CoreML"]
ONE_PER_IMAGE = "each image is a different person"
SAME_PERSON = "all images show the same person"


def images_to_uint8(images: torch.Tensor, name: str = "image") -> list[np.ndarray]:
    """ComfyUI IMAGE (B, H, W, C) floats, any of 1-4 channels -> list of HxWx3 uint8 RGB arrays. An empty batch,
    a 0-pixel image or NaN pixels raise InputError naming the input `name`."""
    rgb = validation.image_batch(name, images)
    array = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return list(array)


def make_analyzer(backend: str, provider: str):
    if backend == EMBEDDED:
        from realisid.faces.embedded import EmbeddedAnalyzer

        return EmbeddedAnalyzer()
    if backend == MINI:
        from realisid.mini.backend import get_mini_analyzer

        return get_mini_analyzer()
    from realisid.faces.insightface_backend import get_insightface_analyzer

    return get_insightface_analyzer(paths.insightface_root(), backend.split()[-1], provider)


class FaceAnalysis(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDFaceAnalysis",
            display_name="RealisID Face Analysis",
            category=CATEGORY,
            description="Chooses the face detector/landmarks/identity backend used by the other RealisID nodes.",
            inputs=[
                io.Combo.Input("backend", options=BACKENDS, default=EMBEDDED,
                               tooltip="embedded: works offline with no model files (dlib 128-d identity; dlib's 68-point landmark "
                                       "model is for non-commercial use). "
                                       "insightface: ArcFace identity; needs the pack's .onnx files in "
                                       "models/insightface/models/<pack>/ (non-commercial licence). "
                                       "mini: the RealisID-Mini world's own detector and face net (shipped in the "
                                       "pack's models/mini/; reads Mini cartoon images only)."),
                io.Combo.Input("provider", options=PROVIDERS, default="CPU",
                               tooltip="onnxruntime device for insightface; falls back to CPU with a warning."),
            ],
            outputs=[FaceAnalyzer.Output(display_name="face_analysis")],
        )

    @classmethod
    def execute(cls, backend, provider) -> io.NodeOutput:
        return io.NodeOutput(make_analyzer(backend, provider))


def detect_people(analyzer, images: list[np.ndarray], selection: str, index: int, on_no_face: str,
                  references: str) -> tuple[list[list], list[int], bool]:
    """(per person, the records of that person (one per reference image that shows them); the indices of the
    images without a face; whether passthrough applies).

    The batch policy for a faceless image: `skip` drops that image and keeps the other people (later people move
    up one box); `passthrough` turns identity off for the WHOLE batch (the apply nodes pass their conditioning
    through): the people of a batch go to layout boxes by position, so dropping one would silently move every
    later person to another box. The people found are still returned, for the preview to show them unused."""
    import comfy.utils

    people, faceless, passthrough = [], [], False
    bar = comfy.utils.ProgressBar(len(images))
    for i, image in enumerate(images):
        found = analyzer.analyze(image, image_index=i)
        bar.update(1)
        found = apply_no_face_policy(found, on_no_face, image_index=i, backend=type(analyzer).__name__)
        if not found:
            faceless.append(i)
            passthrough = passthrough or found is None
            continue
        count = None if (selection == "left_to_right" and references == ONE_PER_IMAGE) else 1
        people.extend([[r] for r in select_faces(found, selection, index, count)])
    if references == SAME_PERSON and people:
        people = [[p[0] for p in people]]
    if passthrough and people:
        log.warning("RealisID: image(s) %s of the reference batch have no face; on_no_face=passthrough turns "
                    "identity off for the whole batch (%d person(s) found are not used)", faceless, len(people))
    return people, faceless, passthrough


class FaceEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDFaceEncoder",
            display_name="RealisID Face Encoder",
            category=CATEGORY,
            description="Detects the reference face(s) and encodes each person in the model's identity space "
                        "(CLIP-vision tokens or ArcFace, as the checkpoint declares).",
            inputs=[
                io.Image.Input("image", tooltip="Reference photo(s). A batch: one person per image, or several "
                                                "photos of the same person (see 'references')."),
                FaceAnalyzer.Input("face_analysis", tooltip="From RealisID Face Analysis."),
                RealisIDModel.Input("realisid_model", tooltip="The model whose identity space the faces are "
                                                              "encoded in."),
                io.Combo.Input("selection", options=list(SELECT_MODES), default="largest",
                               tooltip="Which face(s) of each image: the largest, the one at 'index' (left to "
                                       "right), or every face from left to right (a group photo = several people)."),
                io.Int.Input("index", default=0, min=0, max=64,
                             tooltip="For selection 'index': which face counting from the left (0 = leftmost)."),
                io.Combo.Input("on_no_face", options=list(NO_FACE_POLICIES), default="error",
                               tooltip="No face found in an image: stop with an error; skip that image (the "
                                       "other people keep their order, later ones move up a box); or "
                                       "passthrough: identity off for the whole batch, the apply nodes pass "
                                       "the conditioning through unchanged (the preview marks it)."),
                io.Combo.Input("references", options=[ONE_PER_IMAGE, SAME_PERSON], default=ONE_PER_IMAGE,
                               tooltip="Several photos of one person are merged into one identity."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Needed by checkpoints trained on CLIP-vision tokens (the paper's "
                                            "encoder); not used for ArcFace checkpoints."),
            ],
            outputs=[Faces.Output(display_name="faces"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, image, face_analysis, realisid_model, selection, index, on_no_face, references,
                clip_vision=None) -> io.NodeOutput:
        images = images_to_uint8(image)  # in input order, so the first bad input is named
        validation.face_analyzer("face_analysis", face_analysis)
        validation.of_type("realisid_model", realisid_model, RealisIDModelClass,
                           "RealisID Model Loader or RealisID InstantID Loader")
        if clip_vision is not None:
            validation.of_type("clip_vision", clip_vision, comfy.clip_vision.ClipVisionModel, "Load CLIP Vision")
        people, faceless, passthrough = detect_people(face_analysis, images, selection, index, on_no_face,
                                                      references)
        faces = () if passthrough else tuple(
            identity_sources.encode_person(records, images, realisid_model.identity_space, clip_vision,
                                           label=f"person {i}") for i, records in enumerate(people))
        preview = preview_detections(validation.as_rgb("image", image), people, faceless,
                                     NO_FACE_NOTES.get(on_no_face, "no face"), unused=passthrough)
        return io.NodeOutput(faces, preview)


# what the preview writes over an image without a face, by policy (error never gets to draw)
NO_FACE_NOTES = {"skip": "no face: skipped", "passthrough": "no face: ID off for all"}
UNUSED = "ID off"  # appended to each person's label when passthrough turned identity off for the batch


def preview_detections(image: torch.Tensor, people: list[list], faceless: list[int] = (),
                       note: str = "no face", unused: bool = False) -> torch.Tensor:
    """Each reference image with its selected faces boxed and numbered by person; faceless images get a box
    labelled `note`. unused (passthrough with a faceless image): every person's label says their identity is
    off, since the whole batch passes through."""
    frames = image.cpu().numpy().astype(np.float32)
    suffix = f": {UNUSED}" if unused else ""
    out = []
    for i, frame in enumerate(frames):
        boxes = [(f"person {p}{suffix}", r.box) for p, records in enumerate(people) for r in records
                 if r.image_index == i]
        if i in faceless:
            boxes.append((note, note_box(*frame.shape[1::-1], note)))
        drawn = drawing.draw_boxes(frame, np.array([b for _, b in boxes], np.float64).reshape(-1, 4),
                                   labels=[label for label, _ in boxes])
        out.append(torch.from_numpy(drawn))
    return torch.stack(out)


def note_box(width: int, height: int, note: str) -> tuple[float, float, float, float]:
    """A box whose label fits the image. draw_boxes writes the label above the box at scale box width / 120, and
    OpenCV's simplex font is ~13 px per character and ~27 px tall at scale 1: 6 px of box width per character of
    image width keeps the text inside, and the top sits one text height (plus margin) down."""
    box_width = min(width - 2.0, width * 6.0 / len(note))
    text_height = 30.0 * box_width / 120.0
    top = min(height - 2.0, 4.0 + text_height)
    return 1.0, top, 1.0 + box_width, height - 2.0


class FacesCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDFacesCombine",
            display_name="RealisID Combine Faces",
            category=CATEGORY,
            description="Concatenates people from two encoders: faces_1's people first, then faces_2's.",
            inputs=[
                Faces.Input("faces_1", tooltip="People placed first (boxes 0, 1, ...)."),
                Faces.Input("faces_2", tooltip="People appended after faces_1."),
            ],
            outputs=[Faces.Output(display_name="faces")],
        )

    @classmethod
    def execute(cls, faces_1, faces_2) -> io.NodeOutput:
        combined = validation.faces("faces_1", faces_1) + validation.faces("faces_2", faces_2)
        if len(combined) > MAX_FACES:
            raise validation.InputError(f"faces_2: {len(faces_1)} + {len(faces_2)} people is more than the "
                                        f"{MAX_FACES} RealisID places in one image; encode fewer people")
        return io.NodeOutput(combined)


NODES = [FaceAnalysis, FaceEncoder, FacesCombine]
