"""The repository's model registry: model packages shipped with the code.

    models/<name>/<version>/model.zip       the package (cv/package.py)
    models/<name>/<version>/model.json      its registry entry (name, version, sha256, ...)
    models/<name>/<version>/MODEL_CARD.md   its model card

A Python package only so that installing scanflow installs these files beside ``tasks/``
(tasks/registry.py finds them there); it holds no code.
"""
