"""Host tooling, not the method: boot ComfyUI in-process and load this pack as ComfyUI does (`comfy_host`), the
headless workflow runner (`runner`), and the API-prompt <-> UI-graph format (`workflow_format`)."""
