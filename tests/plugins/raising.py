"""A test plugin whose governance hook raises: the tick must go on without it."""

from wyneos_core import hookimpl


@hookimpl
def wyneos_governance(ctx, nodes):
    raise RuntimeError("rule database unavailable")


@hookimpl
def wyneos_healing(ctx, nodes):
    return "not a list"
