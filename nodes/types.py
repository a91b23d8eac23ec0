"""Custom ComfyUI IO types carried between RealisID nodes (plain Python objects on the wire)."""

from comfy_api.latest import io

# A realisid.checkpoint.RealisIDModel (or the InstantID stand-in): branches + projector, loaded once.
RealisIDModel = io.Custom("REALISID_MODEL")
# A configured face analyzer (insightface pack or the embedded default).
FaceAnalyzer = io.Custom("REALISID_FACE_ANALYZER")
# Encoded reference faces: identity source + records, one entry per person.
Faces = io.Custom("REALISID_FACES")
# A realisid.layout.FaceLayout: where each face goes and what drives its pose/expression.
Layout = io.Custom("REALISID_LAYOUT")
