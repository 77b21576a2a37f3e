"""Logatron on anyio (asyncio and trio): servers, clients and the HTTP interface."""
