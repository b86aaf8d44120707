"""TEST DOUBLE for the Hugging Face Hub, used by tests/test_hub.py. Not part of jsqa; never run it outside tests.

Two local servers stand in for huggingface.co, both bound to 127.0.0.1 only:

* **olah** (a real, independently written Hub mirror from PyPI) serves the read API (refs, model info, tree,
  resolve/download) from local git repos in ``mirrors/models/<org>/<name>``, with ``offline = true`` and its
  upstream pointed at a closed loopback port, so it can never reach the internet.
* :class:`UploadTestDouble` (standard library only) implements just the *write* routes that ``huggingface_hub``
  calls with ``HF_HUB_DISABLE_XET=1``: whoami, create repo, validate-yaml, preupload, LFS batch + PUT, commit,
  create branch, create tag. It requires ``Authorization: Bearer <token>`` on every API route, records each
  request (never the token itself), writes every commit as a real git commit (LFS pointer + object, the layout
  olah reads), and forwards every other request to olah. So one endpoint serves push *and* pull.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024
LIFETIME_S = 600  # olah is killed after this even if the test process dies without cleaning up
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "hub-double",
    "GIT_AUTHOR_EMAIL": "double@localhost",
    "GIT_COMMITTER_NAME": "hub-double",
    "GIT_COMMITTER_EMAIL": "double@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


# ------------------------------------------------------------------------------------------ git repos for olah


def _git(repo: Path, *args: str, input: bytes | None = None, env: dict | None = None) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=input,
        capture_output=True,
        check=True,
        env={**os.environ, **_GIT_ENV, **(env or {})},
    )
    return out.stdout.decode().strip()


def repo_dir(mirrors: Path, repo_id: str) -> Path:
    return Path(mirrors) / "models" / repo_id


def init_repo(mirrors: Path, repo_id: str) -> Path:
    path = repo_dir(mirrors, repo_id)
    if not (path / ".git").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        _git(path, "init", "-q", "-b", "main")
    return path


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def store_lfs_object(repo: Path, data: bytes) -> str:
    oid = hashlib.sha256(data).hexdigest()
    obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    return oid


def resolve_ref(repo: Path, rev: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        return None


def commit_files(
    repo: Path,
    branch: str,
    add: dict[str, bytes | tuple[str, int]],
    delete: list[str] = (),
    message: str = "update",
    tag: str | None = None,
) -> str:
    """Commit on ``branch`` (created from main if new) without a checkout. ``add`` maps a path to its bytes, or to
    ``(sha256, size)`` for an LFS object already stored. LFS-type files become pointers. Returns the commit sha."""
    parent = resolve_ref(repo, f"refs/heads/{branch}") or resolve_ref(repo, "refs/heads/main")
    index = repo / ".git" / f"double-index-{threading.get_ident()}"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        _git(repo, "read-tree", *([parent] if parent else ["--empty"]), env=env)
        for path in delete:
            _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", path, env=env)
        for path, content in add.items():
            if isinstance(content, tuple):
                blob_bytes = lfs_pointer(*content)
            elif is_lfs(path, len(content)):
                blob_bytes = lfs_pointer(store_lfs_object(repo, content), len(content))
            else:
                blob_bytes = content
            blob = _git(repo, "hash-object", "-w", "--stdin", input=blob_bytes)
            _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = _git(repo, "write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)
    sha = _git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
    _git(repo, "update-ref", f"refs/heads/{branch}", sha)
    if tag:
        _git(repo, "tag", "-f", tag, sha)
    return sha


def remote_oid(repo: Path, branch: str, path: str) -> str | None:
    """What the Hub's preupload reports for an existing file: sha256 for LFS files, the git blob sha otherwise."""
    if resolve_ref(repo, f"refs/heads/{branch}") is None:
        return None
    try:
        blob = _git(repo, "rev-parse", "-q", "--verify", f"refs/heads/{branch}:{path}")
    except subprocess.CalledProcessError:
        return None
    data = subprocess.run(["git", "cat-file", "blob", blob], cwd=repo, capture_output=True, check=True).stdout
    m = re.match(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\n", data)
    return m.group(1).decode() if m else blob


# ------------------------------------------------------------------------------------------ olah (real mirror)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def olah_command() -> list[str] | None:
    """How to start olah from this interpreter's environment, or None when it is not installed."""
    exe = Path(sys.executable).parent / "olah-cli"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("olah-cli")
    return [found] if found else None


class OlahServer:
    """olah in offline mirror mode on 127.0.0.1, serving ``mirrors``; links it generates point at ``public_netloc``."""

    def __init__(self, workdir: Path, mirrors: Path, public_netloc: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        public = public_netloc or f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "olah.toml"
        self.config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{workdir / "olah-cache"}"\n'
            'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
            f'mirror-scheme = "http"\nmirror-netloc = "{public}"\nmirror-lfs-netloc = "{public}"\n'
            f'mirrors-path = ["{mirrors}"]\nmetadata-cache-ttl = 0\n'
            "[accessibility]\noffline = true\n"
        )
        self.log = workdir / "olah.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "OlahServer":
        cmd = olah_command()
        if cmd is None:
            raise RuntimeError("olah is not installed")
        if shutil.which("timeout"):
            cmd = ["timeout", str(LIFETIME_S), *cmd]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.config.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited early:\n{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"olah did not start in {timeout:.0f} s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ------------------------------------------------------------------------------------------ upload test double

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<route>preupload|commit|branch|tag)/(?P<rev>.+)$")
_LFS_BATCH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_PUT = re.compile(r"^/__lfs_upload/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})$")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "host",
}


class UploadTestDouble:
    """A fake Hub write API (see module docstring). ``requests`` records what clients sent, without tokens."""

    def __init__(self, mirrors: Path, token: str, user: str = "tester"):
        self.mirrors = Path(mirrors)
        self.token = token
        self.user = user
        self.upstream: str | None = None  # olah's URL; everything not handled here goes there
        self.requests: list[dict] = []
        self.pending_lfs: dict[str, Path] = {}  # oid → uploaded blob, kept in the repo's lfs store
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.netloc = urlsplit(self.url).netloc
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "UploadTestDouble":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None, contains: str = "") -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method) and contains in r["path"]]

    # ---- the routes

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
                body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if raw is None and payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                return self.headers.get("authorization") == f"Bearer {double.token}"

            def _record(self, body: bytes) -> None:
                auth = self.headers.get("authorization")
                rec = {
                    "method": self.command,
                    "path": unquote(urlsplit(self.path).path),
                    "auth": "none" if auth is None else ("ok" if auth == f"Bearer {double.token}" else "bad"),
                    "content_type": self.headers.get("content-type", ""),
                }
                if body and "json" in rec["content_type"]:
                    text = body.decode()
                    rec["json"] = (
                        [json.loads(line) for line in text.splitlines() if line.strip()]
                        if "ndjson" in rec["content_type"]
                        else json.loads(text)
                    )
                elif body:
                    rec["bytes"] = len(body)
                with double._lock:
                    double.requests.append(rec)

            def _route(self) -> None:
                body = self._body() if self.command in ("POST", "PUT") else b""
                path = unquote(urlsplit(self.path).path)
                self._record(body)
                m_put = _LFS_PUT.match(path)
                if self.command == "PUT" and m_put:  # presigned upload: no auth header, like the real CDN
                    return self._lfs_put(m_put["repo"], m_put["oid"], body)
                write_route = (
                    path == "/api/whoami-v2"
                    or path == "/api/repos/create"
                    or path == "/api/validate-yaml"
                    or (self.command == "POST" and (_API.match(path) or _LFS_BATCH.match(path)))
                )
                if not write_route:
                    return self._forward(body)
                if not self._authorized():
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                if path == "/api/whoami-v2":
                    return self._send(
                        200,
                        {
                            "type": "user",
                            "name": double.user,
                            "orgs": [],
                            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                        },
                    )
                data = json.loads(body or b"{}") if "ndjson" not in self.headers.get("content-type", "") else None
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    return self._create_repo(data)
                m = _LFS_BATCH.match(path)
                if m:
                    return self._lfs_batch(m["repo"], data)
                m = _API.match(path)
                repo = repo_dir(double.mirrors, m["repo"])
                if not (repo / ".git").is_dir():
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                route, rev = m["route"], m["rev"]
                if route == "preupload":
                    return self._preupload(repo, rev, data)
                if route == "commit":
                    return self._commit(repo, m["repo"], rev, body)
                if route == "branch":
                    start = resolve_ref(repo, data.get("startingPoint") or "refs/heads/main")
                    if resolve_ref(repo, f"refs/heads/{rev}"):
                        return self._send(409, {"error": "Reference already exists"})
                    if start is None:  # empty repo: the branch appears with its first commit
                        return self._send(200, {})
                    _git(repo, "update-ref", f"refs/heads/{rev}", start)
                    return self._send(200, {})
                # tag
                target = resolve_ref(repo, rev)
                if target is None:
                    return self._send(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
                if resolve_ref(repo, f"refs/tags/{data['tag']}"):
                    return self._send(409, {"error": "Tag already exists"})
                _git(repo, "tag", data["tag"], target)
                return self._send(200, {})

            def _create_repo(self, data: dict) -> None:
                repo_id = f"{data.get('organization') or double.user}/{data['name']}"
                path = repo_dir(double.mirrors, repo_id)
                if (path / ".git").is_dir():
                    return self._send(
                        409, {"error": "You already created this model repo", "url": f"{double.url}/{repo_id}"}
                    )
                init_repo(double.mirrors, repo_id)
                (path / ".git" / "double-visibility").write_text(
                    data.get("visibility") or ("private" if data.get("private") else "public")
                )
                return self._send(200, {"url": f"{double.url}/{repo_id}", "name": repo_id})

            def _preupload(self, repo: Path, rev: str, data: dict) -> None:
                files = [
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if is_lfs(f["path"], f["size"]) else "regular",
                        "shouldIgnore": False,
                        "oid": remote_oid(repo, rev, f["path"]),
                    }
                    for f in data["files"]
                ]
                return self._send(200, {"files": files, "commitOid": resolve_ref(repo, f"refs/heads/{rev}")})

            def _lfs_batch(self, repo_id: str, data: dict) -> None:
                repo = repo_dir(double.mirrors, repo_id)
                objects = []
                for obj in data["objects"]:
                    stored = repo / ".git" / "lfs" / "objects" / obj["oid"][:2] / obj["oid"][2:4] / obj["oid"]
                    entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                    if not stored.is_file():
                        entry["actions"] = {"upload": {"href": f"{double.url}/__lfs_upload/{repo_id}/{obj['oid']}"}}
                    objects.append(entry)
                return self._send(
                    200,
                    {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                    {"Content-Type": "application/vnd.git-lfs+json"},
                )

            def _lfs_put(self, repo_id: str, oid: str, body: bytes) -> None:
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._send(400, {"error": "sha256 mismatch"})
                store_lfs_object(repo_dir(double.mirrors, repo_id), body)
                return self._send(200, {})

            def _commit(self, repo: Path, repo_id: str, rev: str, body: bytes) -> None:
                lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                add, delete = {}, []
                for item in lines:
                    key, v = item["key"], item["value"]
                    if key == "file":
                        add[v["path"]] = base64.b64decode(v["content"])
                    elif key == "lfsFile":
                        obj = repo / ".git" / "lfs" / "objects" / v["oid"][:2] / v["oid"][2:4] / v["oid"]
                        if not obj.is_file():
                            return self._send(422, {"error": f"LFS object {v['oid']} was never uploaded"})
                        add[v["path"]] = (v["oid"], v["size"])
                    elif key in ("deletedFile", "deletedFolder"):
                        delete.append(v["path"])
                parent = header.get("parentCommit")
                if parent and parent != resolve_ref(repo, f"refs/heads/{rev}"):
                    return self._send(412, {"error": "parentCommit is not the head of the branch"})
                with double._lock:
                    sha = commit_files(repo, rev, add, delete, header.get("summary") or "update")
                return self._send(
                    200, {"commitUrl": f"{double.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True}
                )

            def _forward(self, body: bytes) -> None:
                if double.upstream is None:
                    return self._send(404, {"error": "not found"})
                up = urlsplit(double.upstream)
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Host"] = up.netloc
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
                    if "location" in {k.lower() for k in out}:
                        out = {
                            k: (v.replace(up.netloc, double.netloc) if k.lower() == "location" else v)
                            for k, v in out.items()
                        }
                    if self.command == "HEAD":
                        self.send_response(resp.status)
                        for k, v in out.items():
                            self.send_header(k, v)
                        cl = resp.getheader("content-length")
                        self.send_header("Content-Length", cl if cl is not None else "0")
                        self.end_headers()
                        return
                    self._send(resp.status, headers=out, raw=data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _route

        return Handler
