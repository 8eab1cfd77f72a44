"""The one configuration error of the project (pipeline, operators, trainer): its message names the bad key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config key or value; the message names the offending key (`split.max_clip_s: must be >= 0`)."""
