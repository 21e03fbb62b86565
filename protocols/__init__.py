"""Sans-IO wire protocols: fed bytes, they hand back events and bytes. No sockets, no asyncio.

Few verbs, the same in every codec: a reader takes bytes with ``receive_data(data)`` and hands
out ``next_event()`` (an event, or NEED_DATA until one is whole); a tracker of a server
connection is told with ``send(...)`` what goes to the server and with ``receive_data(data)``
what the server answered, each returning what the proxy must write or forward, if anything.
"""
