"""ControlNet units, preprocessors, and reference images (IP-Adapter) for the denoising loop.

Module map (torch-free ones first; they load no torch when imported):

- ``units``: :class:`~core.engine.control.units.ControlUnit` (sd-webui-controlnet's unit fields), the
  guidance window at A1111's step counter, and the per-residual factors of each control mode.
- ``infotext``: the ``ControlNet N`` infotext values — format, parse (current and 1.1.2xx layouts),
  and A1111's legacy 8-digit model hash used in ``name [hash]`` labels.
- ``preprocessors``: the registry by sd-webui-controlnet's names and the cheap numpy/OpenCV ones.
- ``image``: a control map fitted to the generation size by the unit's resize mode.
- ``models`` (torch): ControlNet files → diffusers models (architecture read from the shapes), LRU.
- ``residuals`` (torch): what the active units add to one UNet call, per row.
- ``ip_adapter`` (torch): IP-Adapter + CLIP vision encoder, image tokens, per-row attention hook.
- ``depth`` (torch): the ``depth_anything_v2`` preprocessor.
"""
