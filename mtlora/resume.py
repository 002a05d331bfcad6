"""Old import path of :class:`~mtlora.training.resume.ResumeCheckpoint`.

Configs written before the modules moved into ``mtlora.training`` name the callback
``mtlora.resume.ResumeCheckpoint`` (``trainer.callbacks`` class paths); this keeps them parsing.
"""

from mtlora.training.resume import ResumeCheckpoint

__all__ = ["ResumeCheckpoint"]
