"""The sans-IO SIP core: no Django, no sockets, no asyncio, no clock.

Every mutating call takes ``now`` (seconds, float); output is data.
"""
