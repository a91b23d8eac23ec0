"""RealisID training: `prepare` builds a face cache from image-text pairs, `fit` trains the two branches and the
identity projector against a frozen ComfyUI base. CLI: `python -m realisid.train prepare|fit ...`."""
