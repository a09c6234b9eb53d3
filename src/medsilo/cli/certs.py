"""``medsilo certs init|issue``: the consortium's certificates and keys (``cryptography``,
no openssl needed).

Layout of a certificate directory (directories 0700, private keys 0600, written
atomically and never overwritten)::

    DIR/ca.pem  ca.key                        consortium CA (ECDSA P-256, 10 years)
    DIR/coordinator/cert.pem  key.pem         the SuperLink's TLS server certificate
    DIR/sites/NAME/node.key  node.pub         a SuperNode's authentication key pair
                                              (ECDSA P-256, OpenSSH format)

The CA key signs the coordinator's TLS certificate only; keep ``ca.key`` offline. A site
keeps ``node.key`` and sends ``node.pub`` to the coordinator, who registers it with the
SuperLink (nodes with any other key are refused).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medsilo.cli._common import console, handle_errors
from medsilo.errors import ConfigError

app = typer.Typer(
    help="Consortium certificates: a CA, the coordinator's TLS certificate, site keys.",
    no_args_is_help=True,
)

CA_CERT, CA_KEY = "ca.pem", "ca.key"
DirOpt = Annotated[Path, typer.Option("--dir", help="The certificate directory.")]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (refusing to overwrite), via a temp file + rename."""
    if path.exists():
        raise ConfigError(f"{path}: already exists; remove it first to issue a new one")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medsilo consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def init_ca(directory: Path, name: str = "medsilo consortium CA", days: int = 3650) -> Path:
    """Create the consortium CA in ``directory``; returns the CA certificate's path."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), 0o600)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise ConfigError(f"{directory}: no CA here ({CA_CERT}, {CA_KEY}); run medsilo certs init")
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: not an ECDSA key")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), key


def issue_coordinator(directory: Path, hosts: list[str], days: int = 825) -> Path:
    """A TLS server certificate for the SuperLink, valid for ``hosts`` (names or IPs)."""
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = directory / "coordinator"
    _write(out / "key.pem", _key_pem(key), 0o600)
    _write(out / "cert.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out


def issue_site(directory: Path, name: str) -> Path:
    """A SuperNode authentication key pair (ECDSA P-256, OpenSSH) for site ``name``."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"site name {name!r}: use letters, digits, '.', '_' or '-'")
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    out = directory / "sites" / name
    _write(out / "node.key", private, 0o600)
    _write(out / "node.pub", public + f" medsilo-site-{name}\n".encode(), 0o644)
    return out


@app.command("init")
@handle_errors
def init(directory: DirOpt = Path("certs")) -> None:
    """Create the consortium CA (ca.pem, ca.key mode 0600)."""
    path = init_ca(directory)
    console.print(f"CA certificate: {path} (keep {directory / CA_KEY} offline)")


@app.command("issue")
@handle_errors
def issue(
    role: Annotated[str, typer.Argument(help="coordinator | site")],
    name: Annotated[str, typer.Argument(help="Site name, or the coordinator's host name.")],
    directory: DirOpt = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="coordinator: more host names / IPs for the certificate."),
    ] = None,
) -> None:
    """Issue the coordinator's TLS certificate or a site's authentication key pair."""
    if role == "coordinator":
        out = issue_coordinator(directory, [name, *(host or [])])
        console.print(f"coordinator TLS certificate and key: {out}/cert.pem, {out}/key.pem")
    elif role == "site":
        out = issue_site(directory, name)
        console.print(
            f"site key pair: {out}/node.key (stays at the site), "
            f"{out}/node.pub (give it to the coordinator)"
        )
    else:
        raise ConfigError(f"role: must be 'coordinator' or 'site' (got {role!r})")
