"""Dictionaries trained here for Gemma-3-270M, on real English from Debian packages.

- ``corpus``: the corpus (sources, licences, token counts, a held-out split);
- ``train``: sae_lens' multi-dictionary training from streamed activations, resumable;
- ``card``: what the trained dictionaries measure (``python -m saes.trained.card``);
- ``paths``: where all of it lives (under ``$CIRCUITS_CACHE``).

``saes.load("gemma-3-270m", dictionaries="trained")`` loads the result (and so does
``saes.load("gemma-3-270m")`` once it exists).
"""
