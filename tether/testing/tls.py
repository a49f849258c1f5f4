"""A throwaway self-signed certificate for TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Where the openssl command is, or None when it is not installed.
OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class SelfSigned:
    """A certificate and its private key (PEM files), valid for ``localhost`` and 127.0.0.1."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context that presents this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts this certificate only (hostnames checked)."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed_certificate(folder: Path) -> SelfSigned:
    """Write a fresh self-signed certificate to ``folder`` (``cert.pem``, ``key.pem``).

    An EC P-256 key, valid for one day, for ``DNS:localhost`` and
    ``IP:127.0.0.1``. Raises :class:`FileNotFoundError` when the openssl
    command is not installed, :class:`subprocess.CalledProcessError` when it
    fails.
    """
    if OPENSSL is None:
        raise FileNotFoundError("the openssl command is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SelfSigned(cert, key)
