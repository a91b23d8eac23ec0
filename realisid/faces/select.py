"""Which faces a consumer uses, and the one policy for images without a face (shared by every node)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..validation import InputError
from .errors import NoFaceError
from .record import FaceRecord

log = logging.getLogger(__name__)

SELECT_MODES = ("largest", "index", "left_to_right")
NO_FACE_POLICIES = ("error", "skip", "passthrough")


def select_faces(records: Sequence[FaceRecord], mode: str = "largest", index: int = 0, count: int | None = None):
    """Faces in the order `mode` defines, from position `index`, at most `count` of them.

    largest: by box area, biggest first; count None -> 1 face.
    index: in the backend's order (detector confidence); count None -> 1 face (the `index`-th).
    left_to_right: by box centre x; count None -> every face from `index` on.
    An empty input gives []; `index` past the end of a non-empty input is an error that says how many faces exist.
    """
    if mode not in SELECT_MODES:
        raise ValueError(f"unknown face selection mode '{mode}'; use one of {', '.join(SELECT_MODES)}")
    if index < 0:
        raise ValueError(f"face index must be >= 0, got {index}")
    if count is not None and count < 1:
        raise ValueError(f"face count must be >= 1 (or None), got {count}")
    if not records:
        return []
    if mode == "largest":
        ordered = sorted(records, key=lambda r: -r.area)
    elif mode == "left_to_right":
        ordered = sorted(records, key=lambda r: r.centre[0])
    else:
        ordered = list(records)
    if index >= len(ordered):  # InputError: the node's 'index' input is what to change
        raise InputError(f"index {index} asks for face {index + 1} but image {records[0].image_index} has only "
                         f"{len(ordered)} face(s) (indices start at 0); lower index or use selection 'largest'")
    if count is None:
        count = len(ordered) if mode == "left_to_right" else 1
    return ordered[index : index + count]


def no_face_tips(required_space: str | None = None) -> str:
    """What to try when no face is found; names the one backend the model accepts when it accepts only one."""
    from .analyzer import backend_for_space

    backend = backend_for_space(required_space) if required_space else None
    if backend is not None:
        other = f"use {backend} as the RealisID Face Analysis backend (the only identity this model reads)"
    else:
        other = ("try another face backend: for InstantID workflows choose insightface antelopev2 (the only identity "
                 "InstantID reads); embedded (dlib) works with RealisID checkpoints trained on its identity")
    return (f"Tips: use a photo where the face is larger and frontal, crop closer to the face, {other}, or set "
            f"the no-face policy to 'skip' or 'passthrough'.")


def apply_no_face_policy(records: Sequence[FaceRecord], policy: str, image_index: int = 0, backend: str = "",
                         required_space: str | None = None):
    """Returns `records` when there are any. Otherwise, by `policy`:

    error: raise NoFaceError naming the image, with tips.
    skip: log and return [] (the consumer drops this image from its batch).
    passthrough: return None, the marker that the consumer passes its input through unchanged (e.g. a
        conditioning node returns the conditioning without identity, an image node returns the image as is).
    `required_space`: the identity space of the model the faces are for; the error then names its backend.
    """
    if policy not in NO_FACE_POLICIES:
        raise ValueError(f"unknown no-face policy '{policy}'; use one of {', '.join(NO_FACE_POLICIES)}")
    if records:
        return list(records)
    where = f"image {image_index} of the batch" + (f" (backend {backend})" if backend else "")
    if policy == "error":
        raise NoFaceError(f"no face found in {where}. {no_face_tips(required_space)}")
    if policy == "skip":
        log.warning("no face found in %s; skipping it", where)
        return []
    log.warning("no face found in %s; passing the input through unchanged", where)
    return None
