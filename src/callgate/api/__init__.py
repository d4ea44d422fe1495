"""The HTTP API: REST call control compatible with OpenAI's Realtime SIP interface, its auth
and error shapes (``app.create_app``), and the mount point for the realtime WebSocket."""
