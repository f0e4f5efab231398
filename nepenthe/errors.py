"""One exception family so callers (train.py, tests) can tell user errors from bugs."""

from __future__ import annotations


class NepentheError(Exception):
    """A bad input or state, described in one line that names the value and what would be valid."""


class ConfigError(NepentheError, ValueError):
    """A configuration value is unknown or out of range. ``option`` is the config key the message starts with
    (``pruning.ratio``), so that a caller who passed it under another name (``prune(ratio=...)``) can say that name:
    :meth:`for_caller`."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    def for_caller(self, names: dict[str, str]) -> ConfigError:
        """The same error in the caller's words: ``{"pruning.ratio": "ratio"}`` turns ``pruning.ratio=2.0 must``
        into ``ratio=2.0 must``; an error about an option the caller did not name stays as it is."""
        if self.option not in names:
            return self
        return ConfigError(str(self).replace(self.option, names[self.option], 1), names[self.option])


def bad_option(option: str, value, requirement: str) -> ConfigError:
    """``pruning.p=0.5 must be >= 1 (...)``: the one shape of an out-of-range option's error."""
    return ConfigError(f"{option}={value!r} {requirement}", option)


def check_choice(option: str, value, valid: tuple[str, ...]):
    if value not in valid:
        raise bad_option(option, value, f"is not valid; choose one of {', '.join(valid)}")
    return value


class DataError(NepentheError, FileNotFoundError):
    """A data root is missing, incomplete or corrupt."""


class StorageError(NepentheError, OSError):
    """A record or checkpoint could not be written or read back (disk full, I/O error, corrupt file)."""


def storage_error(action: str, path, exc: OSError) -> StorageError:
    """``could not write runs/x/rounds.jsonl: [Errno 28] No space left on device``: the path and the errno."""
    code = f"[Errno {exc.errno}] " if exc.errno is not None else ""
    return StorageError(f"could not {action} {path}: {code}{exc.strerror or exc}")


class NonFiniteLossError(NepentheError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class NonFiniteInputError(NepentheError, FloatingPointError):
    """An activation saw NaN or infinite inputs while its entropy was measured."""


def check_builder_kwargs(kind: str, name: str, builder, kwargs: dict, reserved=("root",)) -> None:
    """A builder option that does not exist is named, with the valid ones, instead of a TypeError."""
    import inspect

    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the builder forwards extra options (timm's create_model checks them itself)
    valid = [p for p in params if p not in reserved]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"{kind} {name!r} has no option {key!r}; valid: {', '.join(valid)}")


def unknown_name(kind: str, name: str, known) -> ConfigError:
    return ConfigError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
