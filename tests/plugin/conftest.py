"""pytester runs a user's test module against the installed plugin (the pytest11 entry point)."""

pytest_plugins = ["pytester"]
