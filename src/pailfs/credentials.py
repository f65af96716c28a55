"""Where credentials come from, in one order, and keeping temporary ones fresh.

The chain: the first source that is configured gives the credentials.

1. option `passwd_file=FILE`;
2. option `credential_process=CMD` (prints the AWS JSON shape; re-run before expiry);
3. option `ram_role=NAME` (Alibaba ECS instance metadata) or `iam_role=NAME`
   (AWS EC2 instance metadata, IMDSv2); `metadata_url=` moves the service;
4. the default passwd files `/etc/passwd-pailfs`, then `~/.passwd-pailfs`, when they exist;
5. env `OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET` (+ `OSS_SESSION_TOKEN`);
6. env `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
7. web identity, RRSA (ACK): `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`,
   `ALIBABA_CLOUD_OIDC_TOKEN_FILE` -> STS AssumeRoleWithOIDC;
8. web identity, IRSA (EKS): `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`
   -> STS AssumeRoleWithWebIdentity (`sts_endpoint=` or `AWS_STS_ENDPOINT` moves STS);
9. nothing: anonymous requests.

A passwd file holds `bucket:AK:SK` or `bucket:AK:SK:TOKEN` lines (for that bucket)
and at most one `AK:SK` line (any bucket); `#` comments and blank lines are
ignored. Like s3fs/ossfs, a file others could read is refused: mode 0600 or 0400.

Sources 2, 3, 7 and 8 give temporary credentials. `RefreshingCredentials` keeps
them: it fetches again once two thirds of their life has passed (at most 5
minutes before expiry), a failed fetch is logged (never with a secret) and
retried while the old credentials still work, and only once those have expired
does a request fail, with `CredentialsExpired`. A static `Credentials` and a
`RefreshingCredentials` answer the same two calls, `current()` and `fresh()`.

Nothing here formats a secret, a token or a line that holds one into a message,
and the stderr of a credential process is never read.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import re
import shlex
import socket
import ssl
import stat
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import httpx

from pailfs.config import Options
from pailfs.errors import AccessDenied, BadCredentials, BadOption

__all__ = ["Credentials", "CredentialSource", "CredentialsExpired", "DEFAULT_PASSWD_FILES",
           "RefreshingCredentials", "read_passwd_file", "resolve_credentials", "tls_context"]

log = logging.getLogger(__name__)

DEFAULT_PASSWD_FILES = (Path("/etc/passwd-pailfs"), Path("~/.passwd-pailfs"))
SAFE_MODES = (0o600, 0o400)
# (key id, secret, session token)
ENV_KEYS = (("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"),
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
RRSA_ENV = ("ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE")
IRSA_ENV = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
ECS_METADATA = "http://100.100.100.200"
EC2_METADATA = "http://169.254.169.254"
# refresh once this share of a credential's life has passed, but at most this long before expiry
REFRESH_SHARE = 2 / 3
REFRESH_AHEAD_MAX = 300.0
# after a failed refresh, the next try waits this long (doubling), while the old credentials last
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
FETCH_TIMEOUT = 30.0


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Certificates verified against the system CAs, plus `ca_file` when given (never off)."""
    ctx = ssl.create_default_context()
    if ca_file:
        path = Path(ca_file).expanduser()
        try:
            ctx.load_verify_locations(cafile=str(path))
        except FileNotFoundError:
            raise BadOption(f"ca_file {path} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
            raise BadOption(f"ca_file {path} holds no usable PEM certificate ({reason})") from None
    return ctx


class CredentialsExpired(AccessDenied):
    """Temporary credentials expired and could not be refreshed."""


class FetchError(Exception):
    """A credential source failed; the message is safe to show (no secret)."""


@dataclass(frozen=True)
class Credentials:
    """One key pair, with a session token and an expiry when temporary.

    Also a credential source of its own (static): `current()` and `fresh()` return it."""

    access_key: str
    secret_key: str = ""
    token: str | None = None
    expires_at: float | None = field(default=None, compare=False)  # seconds since the epoch; None: never
    # where they came from ("env AWS_ACCESS_KEY_ID", a passwd file...), for error hints
    source: str = field(default="", compare=False)

    refreshable = False
    refreshes = 0

    def __repr__(self) -> str:  # never show the secret or the token
        token = ", token='***'" if self.token else ""
        return f"Credentials(access_key={self.access_key!r}, secret_key='***'{token})"

    def current(self) -> "Credentials":
        return self

    async def fresh(self) -> "Credentials":
        return self

    def invalidate(self) -> None:
        return None


class RefreshingCredentials:
    """Temporary credentials from `fetch`, fetched again before they expire (thread-safe).

    `current()` never waits while the cached credentials are valid (obstore calls it
    on every request, from its own threads and from the event loop); `fresh()` is
    what request paths await first: it refreshes in a worker thread when due."""

    refreshable = True

    def __init__(self, fetch: Callable[[], Credentials], source: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self.source = source
        self._clock = clock
        self._creds: Credentials | None = None
        self._obtained = 0.0
        self._lock = threading.Lock()
        self._refreshing = False
        self._next_try = 0.0
        self._retry_wait = RETRY_FIRST
        self._forced = False
        self.refreshes = 0  # successful fetches after the first
        self.failures = 0

    def __repr__(self) -> str:
        return f"RefreshingCredentials(source={self.source!r}, refreshes={self.refreshes})"

    # --- when ------------------------------------------------------------
    def _refresh_at(self, creds: Credentials) -> float:
        if creds.expires_at is None:
            return float("inf")
        life = max(0.0, creds.expires_at - self._obtained)
        return creds.expires_at - min(REFRESH_AHEAD_MAX, life * (1 - REFRESH_SHARE))

    def _usable(self, creds: Credentials | None, now: float) -> bool:
        return creds is not None and (creds.expires_at is None or now < creds.expires_at)

    def _due(self, now: float) -> bool:
        creds = self._creds
        return creds is None or self._forced or now >= self._refresh_at(creds)

    # --- the two calls ---------------------------------------------------
    def current(self) -> Credentials:
        """The cached credentials while they are valid; else fetch now (blocking)."""
        creds = self._creds
        if self._usable(creds, self._clock()) and not self._forced:
            return creds  # type: ignore[return-value]
        return self._refresh()

    async def fresh(self) -> Credentials:
        """Valid credentials, refreshed in a worker thread when due. A refresh that
        fails is retried later while the old credentials last; CredentialsExpired after."""
        now = self._clock()
        creds = self._creds
        if not self._due(now):
            return creds  # type: ignore[return-value]
        if self._usable(creds, now) and not self._forced and (self._refreshing or now < self._next_try):
            return creds  # type: ignore[return-value]
        return await asyncio.to_thread(self._refresh)

    def invalidate(self) -> None:
        """The store refused the current credentials (e.g. ExpiredToken): fetch anew next time."""
        self._forced = True

    # --- the fetch ---------------------------------------------------------
    def _refresh(self) -> Credentials:
        with self._lock:
            now = self._clock()
            creds = self._creds
            if not self._due(now):
                return creds  # type: ignore[return-value]  (another thread refreshed)
            if self._usable(creds, now) and not self._forced and now < self._next_try:
                return creds  # type: ignore[return-value]
            self._refreshing = True
            try:
                new = self._fetch()
            except FetchError as exc:
                return self._failed(str(exc), creds)
            except Exception as exc:  # noqa: BLE001 - a fetcher bug must not kill the mount
                return self._failed(type(exc).__name__, creds)
            finally:
                self._refreshing = False
            first = self._creds is None
            self._creds, self._obtained = new, self._clock()
            self._forced = False
            self._retry_wait, self._next_try = RETRY_FIRST, 0.0
            if not first:
                self.refreshes += 1
            log.info("credentials from %s %s (access key %s, valid until %s)", self.source,
                     "obtained" if first else "refreshed", new.access_key, _when(new.expires_at))
            return new

    def _failed(self, reason: str, old: Credentials | None) -> Credentials:
        self.failures += 1
        now = self._clock()
        if self._usable(old, now) and not self._forced:
            self._next_try = now + self._retry_wait
            self._retry_wait = min(RETRY_MAX, self._retry_wait * 2)
            log.warning("could not refresh credentials from %s (%s); the current ones last until %s, "
                        "retrying", self.source, reason, _when(old.expires_at))  # type: ignore[union-attr]
            return old  # type: ignore[return-value]
        self._forced = False
        if old is None:
            raise BadCredentials(f"no credentials from {self.source}: {reason}")
        raise CredentialsExpired(f"credentials from {self.source} expired at {_when(old.expires_at)} "
                                 f"and could not be refreshed: {reason}")


CredentialSource = Credentials | RefreshingCredentials


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_expiry(text: object, what: str) -> float:
    if not isinstance(text, str) or not text:
        raise FetchError(f"{what}: no Expiration")
    try:
        when = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FetchError(f"{what}: Expiration {text[:40]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


# --- passwd files ------------------------------------------------------------------
def read_passwd_file(path: str | Path, bucket: str | None) -> Credentials | None:
    """The pair for `bucket` from an ossfs-format file (bucket line first, then the
    default line), or None when the file has neither. BadCredentials if unsafe or malformed."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadCredentials(f"passwd file {path} does not exist") from None
    except OSError as exc:
        raise BadCredentials(f"cannot read passwd file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadCredentials(f"passwd file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode not in SAFE_MODES:
        raise BadCredentials(f"passwd file {path} has mode {mode:04o}; it must be 0600 or 0400 "
                             f"so that other users cannot read it (run: chmod 600 {path})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadCredentials(f"cannot read passwd file {path}: {type(exc).__name__}") from None

    default: Credentials | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(":")]
        # never echo the line: it holds a secret
        if len(fields) not in (2, 3, 4) or not all(fields):
            raise BadCredentials(f"{path} line {lineno}: expected 'bucket:ACCESS_KEY:SECRET[:TOKEN]' "
                                 "or 'ACCESS_KEY:SECRET'")
        if len(fields) >= 3:
            if bucket is not None and fields[0] == bucket:
                token = fields[3] if len(fields) == 4 else None
                return Credentials(fields[1], fields[2], token, source=f"{path} (bucket {bucket})")
        elif default is None:
            default = Credentials(fields[0], fields[1], source=str(path))
    return default


# --- credential_process ---------------------------------------------------------------
@dataclass(frozen=True)
class CredentialProcess:
    """Run a command (split like a shell would, but run without one) and read the AWS
    JSON it prints: Version 1, AccessKeyId, SecretAccessKey, SessionToken, Expiration."""

    argv: tuple[str, ...]

    @classmethod
    def parse(cls, command: str) -> "CredentialProcess":
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise BadCredentials(f"credential_process cannot be split into words: {exc}") from None
        if not argv:
            raise BadCredentials("credential_process is empty")
        return cls(argv)

    @property
    def what(self) -> str:
        return f"credential_process {self.argv[0]}"

    def __call__(self) -> Credentials:
        what = self.what
        try:
            # stderr is not read: a failing helper may print what it holds
            proc = subprocess.run(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=FETCH_TIMEOUT, check=False)
        except FileNotFoundError:
            raise FetchError(f"{what}: no such command") from None
        except PermissionError:
            raise FetchError(f"{what}: not executable") from None
        except subprocess.TimeoutExpired:
            raise FetchError(f"{what}: no answer within {FETCH_TIMEOUT:g}s") from None
        except OSError as exc:
            raise FetchError(f"{what}: {exc.strerror or type(exc).__name__}") from None
        if proc.returncode != 0:
            raise FetchError(f"{what} exited with status {proc.returncode}")
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise FetchError(f"{what} printed no JSON object")
        if data.get("Version", 1) != 1:
            raise FetchError(f"{what}: unsupported Version {str(data.get('Version'))[:10]!r} (expected 1)")
        key, secret, token = data.get("AccessKeyId"), data.get("SecretAccessKey"), data.get("SessionToken")
        if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
            raise FetchError(f"{what}: AccessKeyId or SecretAccessKey missing")
        expires = _parse_expiry(data["Expiration"], what) if data.get("Expiration") else None
        return Credentials(key, secret, token if isinstance(token, str) and token else None, expires,
                           source=what)


# --- web identity (IRSA, RRSA) --------------------------------------------------------
@dataclass(frozen=True)
class WebIdentity:
    """AssumeRoleWithWebIdentity (AWS shape) or AssumeRoleWithOIDC (Alibaba shape) with
    the token in `token_file`, read again at every fetch (kubelet rotates it)."""

    role_arn: str
    token_file: str
    sts_endpoint: str
    session_name: str
    alibaba_provider_arn: str | None = None  # set: RRSA (Alibaba STS)
    ca_file: str | None = None

    @property
    def what(self) -> str:
        return f"{'RRSA' if self.alibaba_provider_arn else 'web identity'} role {self.role_arn}"

    def __call__(self) -> Credentials:
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise FetchError(f"cannot read the token file {self.token_file}: "
                             f"{exc.strerror or type(exc).__name__}") from None
        if not token:
            raise FetchError(f"the token file {self.token_file} is empty")
        if self.alibaba_provider_arn:
            form = {"Action": "AssumeRoleWithOIDC", "Version": "2015-04-01", "Format": "JSON",
                    "Timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "SignatureNonce": uuid.uuid4().hex, "RoleArn": self.role_arn,
                    "OIDCProviderArn": self.alibaba_provider_arn, "OIDCToken": token,
                    "RoleSessionName": self.session_name}
        else:
            form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": self.role_arn,
                    "RoleSessionName": self.session_name, "WebIdentityToken": token}
        resp = _http("POST", self.sts_endpoint, self.what, data=form, ca_file=self.ca_file)
        if self.alibaba_provider_arn:
            return self._alibaba_answer(resp)
        return self._aws_answer(resp)

    def _aws_answer(self, resp: httpx.Response) -> Credentials:
        try:
            root = ET.fromstring(resp.content)
        except ET.ParseError:
            root = None
        if resp.status_code != 200 or root is None:
            code = _xml_text(root, "Code") if root is not None else None
            raise FetchError(f"STS {self.sts_endpoint} refused {self.what}: HTTP {resp.status_code}"
                             + (f" ({code})" if code else ""))
        key, secret, token = (_xml_text(root, n) for n in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
        if not key or not secret:
            raise FetchError(f"STS {self.sts_endpoint} answered without credentials for {self.what}")
        return Credentials(key, secret, token, _parse_expiry(_xml_text(root, "Expiration"), self.what),
                           source=self.what)

    def _alibaba_answer(self, resp: httpx.Response) -> Credentials:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code != 200 or not isinstance(data, dict) or not isinstance(data.get("Credentials"), dict):
            code = data.get("Code") if isinstance(data, dict) else None
            raise FetchError(f"STS {self.sts_endpoint} refused {self.what}: HTTP {resp.status_code}"
                             + (f" ({str(code)[:80]})" if code else ""))
        return _alibaba_credentials(data["Credentials"], self.what)


def _xml_text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == name:
            return (el.text or "").strip() or None
    return None


def _alibaba_credentials(data: Mapping[str, object], what: str) -> Credentials:
    """The Alibaba shape (ECS metadata, STS JSON): AccessKeyId, AccessKeySecret, SecurityToken."""
    key, secret, token = data.get("AccessKeyId"), data.get("AccessKeySecret"), data.get("SecurityToken")
    if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
        raise FetchError(f"{what}: the answer holds no AccessKeyId/AccessKeySecret")
    return Credentials(key, secret, token if isinstance(token, str) and token else None,
                       _parse_expiry(data.get("Expiration"), what), source=what)


def _http(method: str, url: str, what: str, *, ca_file: str | None = None, trust_env: bool = True,
          timeout: float = FETCH_TIMEOUT, **kwargs: object) -> httpx.Response:
    """One request of a credential fetch; failures become a FetchError naming the host."""
    verify: ssl.SSLContext | bool = tls_context(ca_file) if url.startswith("https:") else False
    try:
        with httpx.Client(verify=verify, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                          trust_env=trust_env, follow_redirects=False) as client:
            return client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException:
        raise FetchError(f"{what}: {_host(url)} did not answer (timed out)") from None
    except (httpx.HTTPError, ssl.SSLError, socket.error) as exc:
        raise FetchError(f"{what}: cannot reach {_host(url)} ({type(exc).__name__})") from None


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).split("/", 1)[0]


# --- instance metadata (ECS ram_role, EC2 iam_role) ---------------------------------------
@dataclass(frozen=True)
class InstanceMetadata:
    """Role credentials from the instance metadata service.

    ECS: `GET /latest/meta-data/ram/security-credentials/NAME` (a hardened-mode token
    from `PUT /latest/api/token` when the service gives one). EC2: IMDSv2, a token
    from `PUT /latest/api/token`, then `GET /latest/meta-data/iam/security-credentials/NAME`.
    NAME `auto` (or empty) takes the role the instance lists."""

    kind: str  # "ecs" or "ec2"
    role: str
    base_url: str

    @property
    def what(self) -> str:
        return f"{'ram_role' if self.kind == 'ecs' else 'iam_role'} {self.role or 'auto'}"

    def __call__(self) -> Credentials:
        base = self.base_url.rstrip("/")
        prefix = "aliyun-ecs" if self.kind == "ecs" else "aws-ec2"
        headers: dict[str, str] = {}
        # metadata services answer only direct requests: no proxy from the environment
        resp = _http("PUT", f"{base}/latest/api/token", self.what, trust_env=False, timeout=5.0,
                     headers={f"X-{prefix}-metadata-token-ttl-seconds": "21600"})
        if resp.status_code == 200 and resp.text.strip():
            headers[f"X-{prefix}-metadata-token"] = resp.text.strip()
        elif self.kind == "ec2":
            raise FetchError(f"{self.what}: no IMDSv2 token from {_host(base)} (HTTP {resp.status_code})")
        path = f"{base}/latest/meta-data/{'ram' if self.kind == 'ecs' else 'iam'}/security-credentials/"
        role = self.role
        if not role or role == "auto":
            listed = _http("GET", path, self.what, trust_env=False, timeout=5.0, headers=headers)
            names = listed.text.split() if listed.status_code == 200 else []
            if not names:
                raise FetchError(f"{self.what}: the instance has no role attached (HTTP {listed.status_code})")
            role = names[0]
        resp = _http("GET", path + role, self.what, trust_env=False, timeout=5.0, headers=headers)
        if resp.status_code != 200:
            raise FetchError(f"{self.what}: metadata service answered HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise FetchError(f"{self.what}: the metadata answer is not JSON") from None
        if not isinstance(data, dict) or data.get("Code", "Success") != "Success":
            code = data.get("Code") if isinstance(data, dict) else None
            raise FetchError(f"{self.what}: the metadata service says {str(code)[:60]!r}")
        if self.kind == "ecs":
            return _alibaba_credentials(data, self.what)
        key, secret, token = data.get("AccessKeyId"), data.get("SecretAccessKey"), data.get("Token")
        if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
            raise FetchError(f"{self.what}: the answer holds no AccessKeyId/SecretAccessKey")
        return Credentials(key, secret, token if isinstance(token, str) and token else None,
                           _parse_expiry(data.get("Expiration"), self.what), source=self.what)


# --- the chain ---------------------------------------------------------------------------
def resolve_credentials(bucket: str | None, options: Options,
                        env: Mapping[str, str] | None = None,
                        default_files: tuple[Path, ...] = DEFAULT_PASSWD_FILES) -> CredentialSource | None:
    """The credential source for `bucket` (the chain in the module docstring), or None
    (anonymous requests). Only configuration is read here: temporary credentials are
    fetched at the first request (BadCredentials if that fails)."""
    env = os.environ if env is None else env
    values = options.values
    explicit = values.get("passwd_file")
    if explicit:
        found = read_passwd_file(explicit, bucket)
        if found is None:
            raise BadCredentials(f"passwd file {Path(explicit).expanduser()} has no line for bucket "
                                 f"'{bucket}' and no default 'ACCESS_KEY:SECRET' line")
        return found
    fetcher: CredentialProcess | InstanceMetadata | WebIdentity | None = None
    if values.get("credential_process"):
        fetcher = CredentialProcess.parse(values["credential_process"])
    for kind, name in (("ecs", values.get("ram_role")), ("ec2", values.get("iam_role"))):
        if name and fetcher is None:
            base = values.get("metadata_url") or (ECS_METADATA if kind == "ecs" else EC2_METADATA)
            fetcher = InstanceMetadata(kind, name, base)
    if fetcher is not None:
        return RefreshingCredentials(fetcher, fetcher.what)
    for candidate in default_files:
        candidate = candidate.expanduser()
        if candidate.exists():
            found = read_passwd_file(candidate, bucket)
            if found is not None:
                return found
    for key_var, secret_var, token_var in ENV_KEYS:
        key, secret = env.get(key_var), env.get(secret_var)
        if key and secret:
            return Credentials(key, secret, env.get(token_var) or None, source=f"env {key_var}")
        if key or secret:
            missing = secret_var if key else key_var
            raise BadCredentials(f"{key_var if key else secret_var} is set but {missing} is not")
    fetcher = _web_identity(options, env)
    return RefreshingCredentials(fetcher, fetcher.what) if fetcher is not None else None


def _web_identity(options: Options, env: Mapping[str, str]) -> WebIdentity | None:
    ca_file = options.values.get("ca_file")

    def session(var: str) -> str:
        return env.get(var) or f"pailfs-{socket.gethostname()[:40]}-{os.getpid()}"

    rrsa = [env.get(v) for v in RRSA_ENV]
    if all(rrsa):
        region = env.get("ALIBABA_CLOUD_STS_REGION")
        default = f"https://sts.{region}.aliyuncs.com" if region else "https://sts.aliyuncs.com"
        return WebIdentity(rrsa[0], rrsa[2], _sts_url(options.values.get("sts_endpoint") or default),  # type: ignore[arg-type]
                           session("ALIBABA_CLOUD_ROLE_SESSION_NAME"), alibaba_provider_arn=rrsa[1],
                           ca_file=ca_file)
    if any(rrsa):
        missing = [v for v, value in zip(RRSA_ENV, rrsa) if not value]
        raise BadCredentials(f"RRSA needs {', '.join(RRSA_ENV)}; {', '.join(missing)} not set")
    role, token_file = (env.get(v) for v in IRSA_ENV)
    if role and token_file:
        region = options.values.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        default = f"https://sts.{region}.amazonaws.com" if region else "https://sts.amazonaws.com"
        endpoint = options.values.get("sts_endpoint") or env.get("AWS_STS_ENDPOINT") or default
        return WebIdentity(role, token_file, _sts_url(endpoint), session("AWS_ROLE_SESSION_NAME"), ca_file=ca_file)
    if role or token_file:
        raise BadCredentials(f"web identity needs both {IRSA_ENV[0]} and {IRSA_ENV[1]}; "
                             f"{IRSA_ENV[1] if role else IRSA_ENV[0]} is not set")
    return None


def _sts_url(text: str) -> str:
    """`host`, `host:port` or `scheme://host[:port]` (no scheme: https), as for `url=`."""
    text = text.strip().rstrip("/")
    if "://" not in text:
        text = "https://" + text
    if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+$", text):
        raise BadCredentials(f"bad STS endpoint {text!r}: expected host[:port] or http(s)://host[:port]")
    return text + "/"
