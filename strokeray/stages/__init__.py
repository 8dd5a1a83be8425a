"""Stages: each a function with a typed config, called by the CLI and by jobs/."""
