"""The `mini` face backend: the trained Mini detector and face net behind the pack's FaceAnalyzer interface.

No ground truth is used at inference: boxes, landmarks and identity embeddings come from the networks alone, so the
backend reads generated Mini images as well as rendered ones.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from realisid.faces.analyzer import check_rgb_image
from realisid.faces.record import FaceRecord, kps5_from_landmarks68, square_box_xyxy
from realisid.mini import crops, facenets, files

SPACE = f"mini-facenet-{facenets.EMBEDDING_DIM}"
DETECT_SIZE = 256  # the detector reads images resized so that their longer side is this
REFINE_PASSES = 2  # face-net passes: detection box -> refined box -> final landmarks and embedding


def save_face_models(path, detector: facenets.Detector, facenet: facenets.FaceNet, **info) -> None:
    files.save_networks(path, {"detector": detector, "facenet": facenet}, "faces", space=SPACE, **info)


class MiniFaceAnalyzer:
    space = SPACE

    # 0.4: on the detection gate's held-out scenes 0.3 let one false face in (at 1/3) and 0.5 missed 4 % of the
    # 1/8 faces; 0.4 kept 98 % at 1/8 with no false face
    def __init__(self, path=None, threshold: float = 0.4):
        self.path = str(path or files.FACES_DIR / files.FACES_FILE)
        self.detector, self.facenet = facenets.Detector(), facenets.FaceNet()
        self.info = files.load_networks(self.path, "faces", {"detector": self.detector, "facenet": self.facenet})
        if self.info.get("space") != SPACE:
            raise ValueError(f"{self.path}: identity space {self.info.get('space')!r}, this code reads {SPACE!r}")
        self.threshold = threshold

    @torch.no_grad()
    def detect(self, image_rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(square box xyxy px of the input image, score) for every face the detector finds."""
        h, w = image_rgb.shape[:2]
        scale = DETECT_SIZE / max(h, w)
        resized = cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        found = facenets.decode_detections(self.detector(facenets.images_to_tensor(canvas[None])), self.threshold)[0]
        return [(box / scale, score) for box, score in found]

    def analyze(self, image_rgb: np.ndarray, image_index: int = 0) -> list[FaceRecord]:
        image = check_rgb_image(image_rgb)
        detections = self.detect(image)
        if not detections:
            return []
        refined = self.refine(image, [b for b, _ in detections])
        h, w = image.shape[:2]
        return [FaceRecord(box=r["box"], score=score, kps=kps5_from_landmarks68(r["landmarks"]),
                           landmarks68=r["landmarks"], embedding=r["embedding"], space=SPACE,
                           image_index=image_index, image_size=(w, h))
                for r, (_, score) in zip(refined, detections, strict=True)]

    @torch.no_grad()
    def refine(self, image: np.ndarray, boxes: list[np.ndarray]) -> list[dict]:
        """Face-net passes over each box: refined square box, 68 landmarks (px, read in the frame of the crop they
        were predicted from) and the embedding of the last pass."""
        current = [np.asarray(b, np.float64) for b in boxes]
        results = []
        for _ in range(REFINE_PASSES):
            batch = np.stack([crops.crop(image, b) for b in current])
            out = self.facenet(facenets.images_to_tensor(batch))
            results = []
            for i, frame_box in enumerate(current):
                corners = crops.from_crop_units(out["box"][i].numpy().reshape(2, 2), frame_box).reshape(4)
                results.append({"box": square_box_xyxy(corners, dtype=np.float64, side="mean"),
                                "landmarks": crops.from_crop_units(out["landmarks"][i].numpy(), frame_box),
                                "embedding": out["embedding"][i].numpy()})
            current = [r["box"] for r in results]
        return results


@functools.lru_cache(maxsize=2)
def get_mini_analyzer(path: str | None = None) -> MiniFaceAnalyzer:
    return MiniFaceAnalyzer(path)
