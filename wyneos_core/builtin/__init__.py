"""The builtin plugins, one module per tick step; listed in ``wyneos_core.plugins.BUILTIN_PLUGINS``."""
