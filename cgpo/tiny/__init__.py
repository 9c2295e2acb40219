"""The embedded tiny default, built locally without a network.

A character tokenizer with a chat template, a small Llama policy warm-started by SFT on bundled synthetic
tasks, and a small Llama reward model.

``tiny:policy`` and ``tiny:reward`` in a config resolve to the cached build (see :mod:`cgpo.tiny.build`).
"""
