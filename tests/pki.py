"""Certificates for the TLS tests, made by ``trustme`` (as anyio's own tests do): a CA, the
server's certificate (``localhost``, ``127.0.0.1``, ``::1``), client certificates on demand,
and a second CA that nobody trusts. Everything is written to files, since the servers and the
clients read PEM files, and the contexts are built by Logatron's own functions."""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from logatron_sync._tls import client_context, server_context

__all__ = ["Pki"]


class Pki:
    """The files live in ``directory``; client certificates are made once per name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(self.ca_file)
        server = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        for blob in server.cert_chain_pems:
            blob.write_to_path(self.server_cert, append=True)
        server.private_key_pem.write_to_path(self.server_key)
        self.stranger = trustme.CA()  # signs certificates the server does not trust
        self.stranger_file = directory / "stranger-ca.pem"
        self.stranger.cert_pem.write_to_path(self.stranger_file)
        self._clients: dict[tuple[str, str | None, bool], Path] = {}

    def server_context(self, *, client_certificates: bool = False) -> ssl.SSLContext:
        client_ca = self.ca_file if client_certificates else None
        return server_context(self.server_cert, self.server_key, client_ca=client_ca)

    def client_pem(
        self, name: str, *, common_name: str | None = None, stranger: bool = False
    ) -> Path:
        """A file with the key and certificate of a client named ``name`` (a DNS subject
        alternative name), with ``common_name`` as its CN; signed by the untrusted CA if
        ``stranger``."""
        key = (name, common_name, stranger)
        if key not in self._clients:
            ca = self.stranger if stranger else self.ca
            cert = ca.issue_cert(name, common_name=common_name)
            path = self.directory / f"client-{len(self._clients)}.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(path)
            self._clients[key] = path
        return self._clients[key]

    def client_context(
        self, name: str | None = None, *, common_name: str | None = None, stranger: bool = False
    ) -> ssl.SSLContext:
        """A context that trusts the CA and, with ``name``, presents that client's
        certificate (see ``client_pem``)."""
        cert = None
        if name is not None:
            cert = self.client_pem(name, common_name=common_name, stranger=stranger)
        return client_context(self.ca_file, cert=cert)

    def server_spki_sha256(self) -> str:
        """The base64 SHA-256 of the server certificate's public key, as Chromium's
        ``--ignore-certificate-errors-spki-list`` takes it."""
        pem = self.server_cert.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()
