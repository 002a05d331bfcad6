"""The Lightning layer: LightningModule, callbacks, resume, Lightning checkpoint IO, the CLI.

Everything that imports Lightning lives here (data modules aside); ``mtlora.models``,
``mtlora.metrics`` and ``mtlora.io`` stay usable without it.
"""
