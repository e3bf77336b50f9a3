"""A fake Hugging Face Hub for tests: NOT a Hub implementation, test code only.

It serves, on 127.0.0.1 and an ephemeral port, the subset of the Hub HTTP API
that `huggingface_hub` 2.x uses to push a model (`create_repo`,
`create_branch`, `preupload`, `commit`, README validation) and that
`hf_hub_download`/`from_pretrained` use to fetch it back (`HEAD`/`GET
resolve`, model info, tree listing, whoami). Point a client process at it with
`HF_ENDPOINT=http://127.0.0.1:PORT` (read by `huggingface_hub` at import time,
so set it before the client starts).

Storage is in memory with a real history: every commit gets a SHA-1 id over
its parent, message and file hashes; branches (`main`, `create_branch`,
`revision=` uploads) and PR refs (`refs/pr/N`) point at commits, and files
resolve per branch or commit id.

Upload modes: the real Hub answers "lfs" to `preupload` for binary files such
as `*.safetensors`, after which `huggingface_hub` (with `hf_xet` installed)
uploads through the Xet CAS service, which no stdlib server can stand in for.
This server answers "regular" for every file, so the client sends weights
base64-encoded inside the ndjson commit payload; everything else (create,
preupload, commit, resolve) goes through the client's real HTTP code.

Only the stdlib is used. `HubServer.fail_commits` (or a repo id added to
`HubServer.state.fail_commit_repos`) makes the commit route answer 500: a
server error mid-upload, after repo creation and preupload succeeded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TEST_TOKEN = "hf_local_test_token_not_a_secret"
TEST_USER = "test-user"


def git_blob_sha1(data: bytes) -> str:
    """Git's blob id, which the Hub reports as a regular file's oid/ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    pr_count: int = 0

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def new_commit(self, parent: Commit | None, message: str, files: dict[str, bytes]) -> Commit:
        digest = hashlib.sha1()
        digest.update((parent.oid if parent else "").encode())
        digest.update(message.encode())
        digest.update(str(time.time_ns()).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        commit = Commit(oid=digest.hexdigest(), parent=parent.oid if parent else None, message=message, files=files)
        self.commits[commit.oid] = commit
        return commit


class HubState:
    """Everything the server knows; shared by the handler threads under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.fail_commits = False  # every commit answers 500
        self.fail_commit_repos: set[str] = set()  # only commits to these repos answer 500
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for assertions


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/0.1"
    state: HubState  # set on the subclass built by HubServer

    # -- plumbing -----------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head=head)

    def _endpoint(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return TEST_USER if auth == f"Bearer {TEST_TOKEN}" else None

    def _require_user(self) -> str | None:
        user = self._user()
        if user is None:
            self._error(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self._user() is None):
            self._error(404, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    @staticmethod
    def _segments(path: str) -> list[str]:
        # split before unquoting: a quoted revision such as refs%2Fpr%2F1 is one segment
        return [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []

    # -- dispatch -----------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        seg = self._segments(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body() if method == "POST" else b""
        with self.state.lock:
            self.state.requests.append((method, url.path))
            try:
                self._route(method, seg, query, body)
            except Exception as error:  # a bug in the fake must surface as a 500, not a hang
                self._error(500, f"fake hub error: {error!r}")

    def _route(self, method: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        head = method == "HEAD"
        if seg[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._json(200, {"errors": [], "warnings": []})
        if len(seg) >= 4 and seg[:2] == ["api", "models"]:
            repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
            if not rest and method in ("GET", "HEAD"):
                return self._model_info(repo_id, None, head)
            if rest[:1] == ["revision"] and len(rest) == 2 and method in ("GET", "HEAD"):
                return self._model_info(repo_id, rest[1], head)
            if rest[:1] == ["preupload"] and len(rest) == 2 and method == "POST":
                return self._preupload(repo_id, rest[1], json.loads(body or b"{}"))
            if rest[:1] == ["commit"] and len(rest) == 2 and method == "POST":
                return self._commit(repo_id, rest[1], query, body)
            if rest[:1] == ["branch"] and len(rest) == 2 and method == "POST":
                return self._create_branch(repo_id, rest[1], json.loads(body or b"{}"))
            if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            if rest == ["refs"] and method == "GET":
                return self._refs(repo_id)
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), head)
        self._error(404, f"fake hub: no route for {method} /{'/'.join(seg)}", head=head)

    # -- routes -------------------------------------------------------------------
    def _whoami(self) -> None:
        user = self._require_user()
        if user:
            self._json(200, {"type": "user", "name": user, "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create_repo(self, payload: dict) -> None:
        user = self._require_user()
        if not user:
            return
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, "the fake hub only hosts model repos")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self._endpoint()}/{repo_id}"
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url},
                              {"X-Error-Message": "You already created this model repo"})
        repo = Repo(repo_id=repo_id, private=payload.get("visibility") == "private")
        initial = repo.new_commit(None, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        repo.refs["main"] = initial.oid
        self.state.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _model_info(self, repo_id: str, revision: str | None, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = repo.resolve(revision or "main")
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        self._json(200, {
            "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in sorted(commit.files.items())],
        }, head=head)

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._require_user():
            return
        commit = repo.resolve(revision)
        files = commit.files if commit else {}
        self._json(200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
            for f in payload.get("files", [])
        ]})

    def _commit(self, repo_id: str, revision: str, query: dict[str, str], body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._require_user():
            return
        if self.state.fail_commits or repo_id in self.state.fail_commit_repos:
            return self._error(500, "Internal Error - We're working hard to fix this as soon as possible!")
        create_pr = query.get("create_pr") in ("1", "true")
        parent = repo.resolve(revision)
        if parent is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if not create_pr and revision not in repo.refs:
            return self._error(400, f"cannot commit to {revision}: not a branch")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), None)
        if header is None or not header.get("summary"):
            return self._error(400, "commit header with a summary is required")
        if header.get("parentCommit") and not parent.oid.startswith(header["parentCommit"]):
            return self._error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, "only base64 file contents are supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                return self._error(400, "the fake hub answered 'regular' at preupload; no LFS objects stored")
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
        message = header["summary"] + ("\n\n" + header["description"] if header.get("description") else "")
        commit = repo.new_commit(parent, message, files)
        pr_url = None
        if create_pr:
            repo.pr_count += 1
            repo.refs[f"refs/pr/{repo.pr_count}"] = commit.oid
            pr_url = f"{self._endpoint()}/{repo_id}/discussions/{repo.pr_count}"
        else:
            repo.refs[revision] = commit.oid
        self._json(200, {"success": True, "commitOid": commit.oid,
                         "commitUrl": f"{self._endpoint()}/{repo_id}/commit/{commit.oid}",
                         "pullRequestUrl": pr_url})

    def _create_branch(self, repo_id: str, branch: str, payload: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._require_user():
            return
        if branch in repo.refs:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "Invalid starting point", "RevisionNotFound")
        repo.refs[branch] = start.oid
        self._json(200, {})

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        def ref(name: str, oid: str) -> dict:
            return {"name": name, "ref": name if name.startswith("refs/") else f"refs/heads/{name}", "targetCommit": oid}
        self._json(200, {"branches": [ref(n, o) for n, o in repo.refs.items() if not n.startswith("refs/")],
                         "converts": [], "tags": [],
                         "pullRequests": [ref(n, o) for n, o in repo.refs.items() if n.startswith("refs/pr/")]})

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, str]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        recursive = query.get("recursive", "false").lower() == "true"
        entries: dict[str, dict] = {}
        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                sub = prefix + rest.split("/")[0]
                entries[sub] = {"type": "directory", "path": sub, "oid": "0" * 40, "size": 0}
            else:
                entries[path] = {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}
        if prefix and not entries:
            return self._error(404, f"{folder} does not exist", "EntryNotFound")
        self._json(200, list(entries.values()))

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        if path not in commit.files:
            return self._error(404, "Entry not found", "EntryNotFound", head=head)
        data = commit.files[path]
        etag = f'"{git_blob_sha1(data)}"'
        self._send(200, data, {"X-Repo-Commit": commit.oid, "ETag": etag, "X-Linked-Etag": etag,
                               "Accept-Ranges": "bytes"},
                   content_type="application/octet-stream", head=head)


class HubServer:
    """Start/stop the fake Hub in a daemon thread: `with HubServer() as hub: hub.endpoint`."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("BoundHandler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def fail_commits(self) -> bool:
        return self.state.fail_commits

    @fail_commits.setter
    def fail_commits(self, value: bool) -> None:
        self.state.fail_commits = value

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (a branch or commit id), for assertions."""
        with self.state.lock:
            commit = self.state.repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return dict(commit.files)

    def refs(self, repo_id: str) -> dict[str, str]:
        with self.state.lock:
            return dict(self.state.repos[repo_id].refs)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
