"""The HTTP service, the command line and the settings: the only package that knows HTTP or reads the environment."""
