"""The one error a configuration raises, in a module of its own so that every part that declares
config keys (the schema, the methods) can raise it without importing the schema."""


class ConfigError(ValueError):
    """A configuration file or override that does not fit the declared schema."""
