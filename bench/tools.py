"""What bench/run needs beside the daemon: packages, nginx, a TLS certificate, the facts
about the machine and the versions that go into docs/benchmarks.md."""

from __future__ import annotations

import datetime
import ipaddress
import os
import platform
import pwd
import resource
import shutil
import subprocess
import sys
import time

from _common import HOST, REPO, BenchFailure, Procs, child_env, free_port, http

# binary -> Debian package
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "ab": "apache2-utils", "curl": "curl", "xz": "xz-utils",
            "zstd": "zstd"}


def which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)


def ensure_packages() -> None:
    """apt-get install what is missing (as root); a clear error otherwise."""
    missing = sorted({pkg for binary, pkg in PACKAGES.items() if which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchFailure(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)} (as root)")
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchFailure(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")


# --- TLS -------------------------------------------------------------------------------

def make_cert(directory: str) -> tuple[str, str]:
    """A self-signed EC P-256 certificate for 127.0.0.1; returns (key path, cert path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "talos-images bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


# --- nginx ------------------------------------------------------------------------------

def nginx_conf(tmp: str, port: int, tls_port: int, file_path: str, cert: tuple[str, str]) -> str:
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    location = f"location = /openstack.raw {{ alias {file_path}; }}"
    return f"""\
daemon off;
master_process off;
worker_processes 1;
{user}error_log stderr;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {HOST}:{port};
        {location}
    }}
    server {{
        listen {HOST}:{tls_port} ssl;
        ssl_certificate {cert[1]};
        ssl_certificate_key {cert[0]};
        {location}
    }}
}}
"""


class Nginx:
    """One nginx process (`master_process off`: the process that serves, and which
    PR_SET_PDEATHSIG reaches) serving `file_path` as /openstack.raw over HTTP and HTTPS."""

    path = "/openstack.raw"

    def __init__(self, procs: Procs, tmp: str, file_path: str, cert: tuple[str, str]):
        self.dir = os.path.join(tmp, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.tls_port = free_port(), free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(self.dir, self.port, self.tls_port, file_path, cert))
        self.log = os.path.join(self.dir, "nginx.log")
        with open(self.log, "wb") as log:
            self.proc = procs.start([which("nginx") or "nginx", "-p", self.dir + "/", "-c", conf, "-e", "stderr"],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchFailure(f"nginx exited with status {self.proc.returncode}; see {self.log}")
            try:
                if http("HEAD", self.port, self.path, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchFailure("nginx did not answer within 30s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, tls: bool = False) -> str:
        return f"https://{HOST}:{self.tls_port}{self.path}" if tls else f"http://{HOST}:{self.port}{self.path}"

    def check_alive(self, what: str = "nginx") -> None:
        if self.proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {self.proc.returncode}; see {self.log}")


# --- the daemon's settings ---------------------------------------------------------------

def connection_settings(limit: int = 4096) -> dict[str, str]:
    """TALOS_* variables raising the daemon's connection limits for the run, for those of the
    keys `max_connections` and `max_connections_per_client` that talos_twisted/config/schema.py
    has (read in a child: the tree may be mid-edit)."""
    code = ("from talos_twisted.config.schema import TALOS_SCHEMA\n"
            "print(' '.join(k.name for k in TALOS_SCHEMA if k.env))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    names = set(r.stdout.split()) if r.returncode == 0 else set()
    return {f"TALOS_{k.upper()}": str(limit) for k in ("max_connections", "max_connections_per_client") if k in names}


def raise_fd_limit() -> None:
    """Children inherit it: 32-64 connections at once, each with a file, plus nginx's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


# --- facts -----------------------------------------------------------------------------

def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def facts() -> dict[str, str]:
    import twisted

    cpu, mem = "?", "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        kib = next((int(line.split()[1]) for line in f if line.startswith("MemTotal")), 0)
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "talos_twisted", "twisted"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "?", False
    wrk = _first_line([which("wrk") or "wrk", "-v"]).split(" [")[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "cores": str(os.cpu_count()),
        "ram": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "nginx": _first_line([which("nginx") or "nginx", "-v"]).replace("nginx version: ", ""),
        "curl": " ".join(_first_line(["curl", "--version"]).split()[:2]),
        "wrk": wrk,
        "ab": _first_line(["ab", "-V"]).replace("This is ", "").split(" <")[0].replace(", Version", ""),
        "xz": _first_line(["xz", "--version"]),
        "zstd": _first_line(["zstd", "--version"]).strip("* ").split(",")[0],
    }
