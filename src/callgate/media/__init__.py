"""Media plane: RTP/RTCP, SRTP, codecs, telephone-events, jitter buffer, pacing, resampling.

The packet and codec modules (``rtp``, ``rtcp``, ``srtp``, ``dtmf``, ``g711``, ``codecs``,
``resample``) are sans-IO: bytes and ``now`` in, bytes and values out. ``stream`` is the asyncio
shell that owns a call's sockets and wires them together.
"""
