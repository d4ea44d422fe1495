"""Sans-IO SIP: message syntax, SDP, transactions and dialogs, plus thin asyncio transports."""
