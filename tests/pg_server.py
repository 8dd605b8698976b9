"""A real PostgreSQL for the tests: Debian's binaries (`make test` installs the `postgresql` package),
initdb + pg_ctl in a temp dir on a free port, stopped at the end. initdb refuses to run as root:
as root the cluster belongs to the `postgres` user the package creates."""
import glob
import os
import shutil
import subprocess
import tempfile
import uuid

import psycopg

from helpers import free_port


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    assert found[-1], f"no {name}: install PostgreSQL (make test does: apt-get install postgresql)"
    return found[-1]


class PostgresServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chat-pg-")
        self.data, self.port = os.path.join(self.dir, "data"), free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def start(self):
        # fsync off: the tests check the app's transactions, not the disk's (and run on a shared CI box)
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def _run(self, *args):
        subprocess.run(self.as_user + list(args), check=True, stdout=subprocess.DEVNULL, cwd=self.dir)

    def new_database(self) -> str:
        """The URL of a new, empty database (one per test module or gateway: no shared state)."""
        name = "chat_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self, remove=True):
        self._run(_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop")
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
