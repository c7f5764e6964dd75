"""The architecture world: what networks the hypernetwork is trained and evaluated on.

| module | what |
| --- | --- |
| ``spec`` | the spec format and vocabulary (ops, norms, split spaces), hashing, validation, descriptions |
| ``sampling`` | drawing specs of a split with a ``random.Random``, and why the sampler rejects a draw |
| ``counting`` | exact parameter counts of specs, analytically |
| ``layers`` | norm / activation factories and squeeze-excite, shared by all networks below |
| ``darts`` | DARTS-like CNN cells, and ``build_model`` for every spec family |
| ``cnns`` / ``transformers`` | built-in ResNet, DenseNet, MobileNet / ViT, GPT in plain torch |
| ``registry`` | the built-in model registry (``@register_model``, ``build_predefined``) |
| ``storage`` / ``generate`` | split files (gzip JSON lines + manifest), ``ArchDataset``; generation and its CLI |

``ghn.space``, ``ghn.predefined`` and ``ghn.data`` re-export these names for older code.
"""
