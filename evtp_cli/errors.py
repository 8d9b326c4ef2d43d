"""The error types a user can cause. The CLI maps every `EvtpError` to one red line and exit code 2."""

from __future__ import annotations


class EvtpError(Exception):
    """A problem with the user's input (name, option, path, file). Message says what to do."""


class SpecError(EvtpError, ValueError):
    """A malformed name-with-options string, an unknown name, or an unknown/invalid option key."""


class DataError(EvtpError):
    """A dataset root, split file or record that is missing or malformed."""


class SampleError(Exception):
    """One sample could not be loaded or evaluated; it fails alone and the run goes on."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


class PrunerNotApplicable(EvtpError):
    """A pruner needs something (attention maps, a [CLS] token, ...) the backend cannot give."""
