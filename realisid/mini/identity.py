"""Mini identities: which attributes a Mini person's face carries, and how identities are drawn from a seed.

Identity lives only in the head (face and hair). Coarse attributes (skin tone, hair colour, hair style) survive at
1/8 of the image side; fine ones (eye colour, brows, glasses, facial hair, a mole, the nose) are lost first when the
face shrinks, which is what the local branch exists for. Everything else a scene shows (clothing, background,
framing, pose, expression) is not identity and may be named in a caption; identity never is.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# attribute -> its values; value names are for reports only (captions never mention them)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "skin": ("pale", "light", "tan", "brown", "dark", "deep"),
    "hair_colour": ("black", "brown", "blonde", "red", "white", "blue"),
    "hair_style": ("short", "long", "bald", "spiky", "bun"),
    "eye_colour": ("blue", "green", "brown", "violet"),
    "brows": ("straight", "arched", "bushy"),
    "glasses": ("none", "round", "square"),
    "facial_hair": ("none", "moustache", "beard"),
    "mole": ("none", "left", "right"),
    "nose": ("small", "wide", "long"),
}
COARSE = ("skin", "hair_colour", "hair_style")
FINE = tuple(a for a in ATTRIBUTES if a not in COARSE)
N_IDENTITIES = int(np.prod([len(v) for v in ATTRIBUTES.values()]))

SKIN_RGB = ((255, 226, 200), (238, 190, 146), (214, 150, 96), (168, 108, 66), (112, 70, 42), (70, 42, 26))
HAIR_RGB = ((22, 18, 18), (112, 64, 28), (240, 206, 80), (200, 58, 26), (226, 226, 232), (36, 86, 220))
EYE_RGB = ((30, 110, 255), (20, 190, 50), (120, 62, 16), (170, 40, 220))
# identities with index % HELD_OUT_MODULUS == 0 never appear in training data of any Mini network
HELD_OUT_MODULUS = 10


@dataclasses.dataclass(frozen=True)
class Identity:
    """One person: an index per attribute (see ATTRIBUTES)."""

    skin: int
    hair_colour: int
    hair_style: int
    eye_colour: int
    brows: int
    glasses: int
    facial_hair: int
    mole: int
    nose: int

    @property
    def index(self) -> int:
        """A unique number in [0, N_IDENTITIES): mixed-radix over the attributes in ATTRIBUTES order."""
        out = 0
        for name, values in ATTRIBUTES.items():
            out = out * len(values) + getattr(self, name)
        return out

    @classmethod
    def from_index(cls, index: int) -> Identity:
        if not 0 <= index < N_IDENTITIES:
            raise ValueError(f"identity index must be in [0, {N_IDENTITIES}), got {index}")
        values = {}
        for name, options in reversed(ATTRIBUTES.items()):
            index, values[name] = divmod(index, len(options))
        return cls(**values)

    @property
    def held_out(self) -> bool:
        return self.index % HELD_OUT_MODULUS == 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def describe(self) -> dict[str, str]:
        return {name: ATTRIBUTES[name][v] for name, v in self.as_dict().items()}


def random_identity(rng: np.random.Generator, split: str = "train") -> Identity:
    """A uniformly drawn identity of the split: "train" (never held out), "held_out", or "any"."""
    if split not in ("train", "held_out", "any"):
        raise ValueError(f"split must be 'train', 'held_out' or 'any', got {split!r}")
    while True:
        ident = Identity(**{name: int(rng.integers(len(v))) for name, v in ATTRIBUTES.items()})
        if split == "any" or ident.held_out == (split == "held_out"):
            return ident
