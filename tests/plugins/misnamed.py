"""A test plugin that implements a hook that does not exist."""

from wyneos_core import hookimpl


@hookimpl
def wyneos_governence(ctx, nodes):
    return []
