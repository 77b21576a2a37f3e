"""Logatron on blocking sockets: a selectors server, a client and a logging handler."""
