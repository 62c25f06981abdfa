"""A small stand-in for the Stable Diffusion WebUI's ``modules`` package, used by the extension's tests.

Each stub mirrors the behaviour of the real file that the extension relies on, as of AUTOMATIC1111
stable-diffusion-webui 1.10 (and Forge, which keeps the same API); the file's docstring names its original.
Only the surface the extension touches is reproduced; behaviour is re-implemented, not copied.
"""
