"""ControlNet units, preprocessors, and reference images (IP-Adapter) for the denoising loop.

Torch-free to import: ``units`` (the unit and its schedule), ``infotext`` (sd-webui-controlnet's
``ControlNet N`` keys) and ``preprocessors`` (the registry; the cheap preprocessors use numpy and
OpenCV only) load no torch. ``models`` (ControlNet loading and cache), ``residuals`` (what a step
adds to the UNet), ``image`` (control image to tensor), ``ip_adapter`` and ``depth`` import torch.
"""
