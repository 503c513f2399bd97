"""A throwaway OpenLDAP server (Debian's slapd) on a loopback port, for directory tests.

The server runs in the foreground as a child of the test, from a slapd.conf and an MDB
database under a temporary folder, and is loaded and changed with OpenLDAP's own
`ldapadd`/`ldapmodify`, as an administrator would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.launch import free_port, stop_process

SLAPD = shutil.which("slapd") or next(
    (p for p in ("/usr/sbin/slapd", "/usr/local/libexec/slapd") if Path(p).exists()),
    None,
)
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

SUFFIX = "dc=hospital,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret-for-tests"
SERVICE_DN = f"cn=portal,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-account-secret"

_CONFIG = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {schema}/nis.schema
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
{modules}
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_password}
directory {root}/data
# Only binds may test passwords; only signed-in (bound) clients may read anything, so
# the portal must use its service account to find users and groups.
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


def missing_reason() -> str | None:
    if SLAPD is None:
        return "slapd is not installed (Debian: apt-get install slapd ldap-utils)"
    for tool in ("ldapadd", "ldapmodify", "ldapwhoami"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install ldap-utils)"
    return None


class Slapd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        (self.root / "data").mkdir(parents=True)
        # Debian builds the MDB backend as a module; other builds link it in.
        modules = (
            f"modulepath {MODULE_DIR}\nmoduleload back_mdb"
            if (MODULE_DIR / "back_mdb.la").exists()
            or (MODULE_DIR / "back_mdb.so").exists()
            else ""
        )
        config = self.root / "slapd.conf"
        config.write_text(
            _CONFIG.format(
                schema=SCHEMA_DIR,
                root=self.root,
                modules=modules,
                suffix=SUFFIX,
                root_dn=ROOT_DN,
                root_password=ROOT_PASSWORD,
            )
        )
        log = open(self.root / "slapd.log", "wb")  # noqa: SIM115 - the child holds it
        # -d 0: stay in the foreground, so the test owns the process and stops it.
        self.process = subprocess.Popen(
            [str(SLAPD), "-f", str(config), "-h", f"{self.uri}/", "-d", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.log()}")
            probe = subprocess.run(
                [
                    "ldapwhoami",
                    "-x",
                    "-H",
                    self.uri,
                    "-D",
                    ROOT_DN,
                    "-w",
                    ROOT_PASSWORD,
                ],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"slapd did not answer within {timeout:.0f}s: {self.log()}")

    def _apply(self, tool: str, ldif: str) -> None:
        result = subprocess.run(
            [tool, "-x", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode(),
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed: {result.stderr.decode(errors='replace')}"
            )

    def add(self, ldif: str) -> None:
        self._apply("ldapadd", ldif)

    def modify(self, ldif: str) -> None:
        self._apply("ldapmodify", ldif)

    def log(self) -> str:
        try:
            return (self.root / "slapd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
