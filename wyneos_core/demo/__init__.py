"""The demo cluster behind ``wyneos run`` with no config: a simulator plugin and its config."""
