"""The one error type for bad configuration, raised only at the edges (config loading)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user configuration.

    Args:
        message: What is wrong, for a person.
        field: Dotted path of the offending field (``tiers[1].tbt_ms``), if known.
        source: File (or other origin) the value came from, if known.
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.message = message
        self.field = field
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.message}" if where else self.message

    def within(self, *, source: str | None = None, prefix: str | None = None) -> ConfigError:
        """The same error, located inside ``source`` and under the field ``prefix``."""
        field = self.field
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        return ConfigError(self.message, field=field, source=source or self.source)
