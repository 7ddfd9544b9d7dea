"""Errors that speak to the user: what was wrong, what was expected, what to do."""


class ModernCNNError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownModelError(ModernCNNError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(ModernCNNError, ValueError):
    """A model option that does not exist or has an invalid value."""


class InputShapeError(ModernCNNError, ValueError):
    """An input tensor whose shape the model cannot take."""


class CheckpointError(ModernCNNError, ValueError):
    """A missing, corrupt or mismatched checkpoint or weight file."""


class DataError(ModernCNNError, ValueError):
    """Missing, empty or corrupt training data."""
