"""What an operator sees of the gateway: metrics, call records, recordings and the console.

The call and realtime layers report through one small seam, :mod:`callgate.observe.events`
(typed events into a :class:`~callgate.observe.events.CallObserver`); everything else here
consumes those events and never sits on a call's path.
"""
