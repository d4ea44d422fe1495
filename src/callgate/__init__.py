"""callgate: a self-hosted gateway between SIP phone calls and realtime voice AI."""

__version__ = "0.1.0"
