"""One exception hierarchy: everything gremlinkit raises on purpose derives from GremlinkitError."""


class GremlinkitError(Exception):
    """Base class of gremlinkit's errors."""


class ConfigError(GremlinkitError, ValueError):
    """An experiment parameter is unknown, missing, of the wrong type or out of range."""


class UnknownArtefactError(GremlinkitError, KeyError):
    """A zoo artefact name that the zoo does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SiteError(GremlinkitError, ValueError):
    """An unknown site, or an SAE that does not fit its site."""


class InterventionError(GremlinkitError, ValueError):
    """An intervention with a bad feature, position, vector or coefficient."""


class InputError(GremlinkitError, ValueError):
    """Bad prompts or generation arguments."""


class HubError(GremlinkitError, OSError):
    """A model or SAE that could not be fetched from the Hugging Face hub or the SAELens registry."""
