"""Sans-IO wire protocols: fed bytes, they hand back events and bytes. No sockets, no asyncio."""
