"""The result controls users know from Midjourney, as pure request transformations (torch-free):
``vary`` (Vary subtle / strong, A1111 variation seeds) and ``outpaint`` (Zoom out 1.5× / 2×, Pan
⬅️➡️⬆️⬇️ through the inpaint path). The bot's buttons and the services' use cases call these.
"""
