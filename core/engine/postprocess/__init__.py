"""After the first image: upscaler models, face restoration, the detailer's detector, the /describe tagger.

Model-side libraries only; the engine, the queue and the bot call them.

- :mod:`.files` — listing and resolving model files by name inside their configured folders; the
  :class:`~.files.PostprocessError` every part raises for a user-facing problem.
- :mod:`.spandrel_loader` — safe weights reading (``.safetensors``; pickles only with
  ``weights_only=True`` and ``engine.allow_pickle``) and spandrel's architecture detection.
- :mod:`.tiling` — tiled inference with blended overlaps.
- :mod:`.upscalers` — :class:`~.upscalers.Upscalers`: names (A1111's included), loading, ``upscale_by``
  / ``upscale_to`` with A1111's semantics.
- :mod:`.onnx_models` — onnxruntime sessions (CUDA when there is one).
- :mod:`.detect` — the YuNet face detector (ONNX), box decoding and NMS.
- :mod:`.detailer` — ADetailer's idea: detect, mask, inpaint each region through an injected callable,
  paste back; ADetailer's infotext keys.
- :mod:`.faces` — face restoration (GFPGAN, CodeFormer when installed) on aligned face crops.
- :mod:`.tagger` — WD14 v3 booru taggers for /describe.

Importing this package loads no torch; the modules that need it import it themselves.
"""
