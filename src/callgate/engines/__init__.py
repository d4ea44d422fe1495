"""The voice AI behind a realtime session: one small streaming interface, several engines."""
