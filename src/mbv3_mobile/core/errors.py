"""Errors a user can fix. The CLI prints their message (no traceback) and exits 2."""


class UserError(Exception):
    """Base for errors caused by input (files, options, data), with a message saying how to fix it."""


class ConfigError(UserError, ValueError):
    """An unsupported model/preprocessing setting (arch, width, resolution, ...)."""
