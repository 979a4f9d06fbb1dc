"""A test plugin that forgot the hookimpl marker."""


def wyneos_governance(ctx, nodes):
    return []
