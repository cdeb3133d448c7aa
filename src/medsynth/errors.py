"""The error types of medsynth.

Every error is raised where the problem is detected and its message names the file or value, what is
wrong with it and how to fix it; an `InputWarning` does the same for input read with a fallback. Callers sort errors by type only: the CLI maps `InputError` to exit
code 2 and every other `MedsynthError` to 1; the plugin shows any of them as a notification.
"""


class MedsynthError(Exception):
    """Base class of all errors medsynth raises on purpose."""


class InputError(MedsynthError, ValueError):
    """The user's input (a file, a folder, a setting) cannot be used as given."""


class UnreadableFileError(InputError):
    """A path does not exist, cannot be opened, or is not a file of the format its name claims."""


class MissingDecoderError(InputError):
    """Pixel data uses a compression for which no decoder package is installed."""


class SettingsError(InputError):
    """One or more settings of a recipe are unknown or out of range; the message names each key."""


class CheckpointError(InputError):
    """A checkpoint file is corrupt, of an unknown recipe, or of a newer format than this version reads."""


class MissingWeightsError(MedsynthError, FileNotFoundError):
    """Pretrained weights (VGG, Inception, ...) are not present locally; the message says where to put them."""


class TrainingError(MedsynthError, RuntimeError):
    """Training cannot go on (non-finite loss or gradients, ...); no broken model is written."""


class InputWarning(UserWarning):
    """The input was usable only by assuming something (a fallback orientation, ignored bytes, a split series);
    the message names the file, what was assumed and how to fix the file."""
