"""A test plugin asking for an argument the hook does not pass."""

from wyneos_core import hookimpl


@hookimpl
def wyneos_healing(ctx, nodes, weather):
    return []
