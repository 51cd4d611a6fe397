"""The on-prem / local ingress: Debian's nginx in front of the transformer (``hndsr serve ingress``).

Renders ``ingress/nginx.conf.template`` with the serving configuration's own limits (body size from
:class:`serving.validation.Limits`, per-client rate and upstream timeout from
:class:`serving.transformer_settings.TransformerSettings`), makes a self-signed certificate when none is
given, and runs nginx in the foreground with every file it writes under one prefix directory. The cluster
equivalent (Istio Gateway, cert-manager, Envoy local rate limit and buffer filters) is in
``manifests/ingress/``.
"""

from __future__ import annotations

import math
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from hndsr.errors import HNDSRError

TEMPLATE = Path(__file__).resolve().parents[1] / "ingress" / "nginx.conf.template"
NGINX = "/usr/sbin/nginx"


def _serving_defaults() -> tuple[int, float, float, int]:
    """Body limit (bytes), per-client rate (/s), burst and upstream timeout (s) of the transformer."""
    from serving.transformer_settings import TransformerSettings

    s = TransformerSettings()
    return s.limits.max_body_bytes, s.rate_limit_rps, s.timeout_s, s.rate_limit_burst


@dataclass(frozen=True)
class IngressConfig:
    upstream: str  # host:port of the transformer
    https_port: int = 8443
    http_port: int = 8000  # plain HTTP: redirected to HTTPS
    bind: str = "127.0.0.1"
    rate_per_s: float = field(default_factory=lambda: _serving_defaults()[1])
    burst: int = field(default_factory=lambda: _serving_defaults()[3])
    max_body_bytes: int = field(default_factory=lambda: _serving_defaults()[0])
    read_timeout_s: float = field(default_factory=lambda: _serving_defaults()[2])
    client_body_timeout_s: int = 60  # longest pause between two reads of a client's upload
    worker_processes: int = 2

    def __post_init__(self) -> None:
        if self.rate_per_s * 60 < 1:
            raise HNDSRError(f"rate {self.rate_per_s}/s is below nginx's resolution (1 request a minute)")
        if self.burst < 0 or self.max_body_bytes <= 0:
            raise HNDSRError("burst must be >= 0 and the body limit > 0")


def render(config: IngressConfig, prefix: Path, certificate: Path, certificate_key: Path) -> str:
    """The nginx.conf text for ``config``, with pid, logs and temp files under ``prefix``."""
    if not TEMPLATE.is_file():
        raise HNDSRError(f"nginx template not found at {TEMPLATE}: run from a checkout of the repository")
    # nginx started as root switches its workers to `user`; keep them able to use the prefix.
    user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else ""
    return Template(TEMPLATE.read_text()).substitute(
        user_directive=user,
        worker_processes=config.worker_processes,
        prefix=prefix,
        bind=config.bind,
        http_port=config.http_port,
        https_port=config.https_port,
        upstream=config.upstream,
        certificate=certificate,
        certificate_key=certificate_key,
        rate_per_s=f"{config.rate_per_s:g}",
        rate_per_minute=round(config.rate_per_s * 60),
        burst=config.burst,
        retry_after_s=max(1, math.ceil(1.0 / config.rate_per_s)),
        max_body_bytes=config.max_body_bytes,
        max_body_mb=f"{config.max_body_bytes / 2**20:g}",
        read_timeout_s=math.ceil(config.read_timeout_s),
        client_body_timeout_s=config.client_body_timeout_s,
    )


def self_signed_certificate(
    directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> tuple[Path, Path]:
    """A P-256 certificate valid 30 days for ``hosts`` (DNS names and IPs), made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise HNDSRError("openssl not found: install it (apt-get install openssl) or pass --cert and --key")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    cmd += ["-sha256", "-days", "30", "-subj", f"/CN={hosts[0]}", "-addext", f"subjectAltName={san}"]
    cmd += ["-keyout", str(key), "-out", str(cert)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HNDSRError(f"openssl could not make a certificate: {result.stderr.strip()[-500:]}")
    key.chmod(0o600)
    return cert, key


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


@dataclass
class NginxIngress:
    """nginx in the foreground under ``prefix``; ``start`` returns once the HTTPS port answers."""

    config: IngressConfig
    prefix: Path
    certificate: Path | None = None
    certificate_key: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.config.bind}:{self.config.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.bind}:{self.config.http_port}"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def write_config(self) -> Path:
        self.prefix = self.prefix.resolve()
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        if self.certificate is None or self.certificate_key is None:
            self.certificate, self.certificate_key = self_signed_certificate(self.prefix / "tls")
        self.conf_path.write_text(render(self.config, self.prefix, self.certificate, self.certificate_key))
        return self.conf_path

    def _cmd(self, *extra: str) -> list[str]:
        if not Path(NGINX).is_file():
            raise HNDSRError(f"{NGINX} not found: install Debian's nginx (apt-get install nginx)")
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log), *extra]

    def check(self) -> None:
        """``nginx -t`` on the rendered configuration."""
        result = subprocess.run(self._cmd("-t"), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HNDSRError(f"nginx rejected {self.conf_path}: {result.stderr.strip()[-1000:]}")

    def start(self, timeout_s: float = 30.0, log: Path | None = None) -> NginxIngress:
        self.write_config()
        self.check()
        out = open(log or self.prefix / "nginx.out", "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            self._cmd(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HNDSRError(f"nginx exited with {self.proc.returncode}: {self.log_tail()}")
            if _tls_answers(self.config.bind, self.config.https_port):
                return self
            time.sleep(0.1)
        self.stop()
        raise HNDSRError(f"nginx did not answer on :{self.config.https_port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no error log)"


def _tls_answers(host: str, port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock, context.wrap_socket(sock):
            return True
    except OSError:
        return False


def https_examples(ingress: NginxIngress) -> str:
    cert = ingress.certificate
    return f"""
Ingress (nginx, TLS) on {ingress.url} -> transformer {ingress.config.upstream}; plain HTTP on
{ingress.http_url} redirects (308). Certificate: {cert}

  curl -s --cacert {cert} {ingress.url}/health
  SSL_CERT_FILE={cert} hndsr client sr image.png sr.png --url {ingress.url} --scale 4
  # {ingress.config.rate_per_s:g} req/s per client (burst {ingress.config.burst}) -> 429 + Retry-After;
  # bodies over {ingress.config.max_body_bytes:,} bytes -> 413; logs in {ingress.prefix}
"""


def run_ingress(ingress: NginxIngress) -> None:
    """``hndsr serve ingress``: nginx in the foreground until Ctrl+C or SIGTERM."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    ingress.start()
    try:
        print(https_examples(ingress), flush=True)
        assert ingress.proc is not None
        ingress.proc.wait()
        raise HNDSRError(f"nginx exited with {ingress.proc.returncode}: {ingress.log_tail()}")
    except KeyboardInterrupt:
        print("stopping nginx", flush=True)
    finally:
        ingress.stop()
