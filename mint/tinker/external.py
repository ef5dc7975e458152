"""External weights: a training client's adapter as files for download (`save_weights_external`),
kept in the artifact store, optionally age-encrypted, fetched through time-limited signed URLs.

tinker-cookbook's `weights.download` asks for an export encrypted to a key it makes for that
download, fetches each file's signed URL with plain HTTP (no API key), decrypts and deletes the
export. A URL names the checkpoint, the file and its expiry, signed with the server's secret; it is
honoured only until it expires and while the checkpoint exists.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from mint.tinker.auth import Keys
from mint.tinker.checkpoints import TinkerPath
from mint.tinker.wire import WireError

AGE_SUFFIX = ".age"
URL_LIFETIME_S = 3600
DOWNLOAD_ROUTE = "/external_weights/download"  # under /api/v1


def encrypted(data: bytes, recipients: list[str], name: str = "") -> tuple[str, bytes]:
    """(`name`, `data`) as stored: unchanged without recipients, else age-encrypted to every
    recipient (`age1…` or an SSH public key) and named `<name>.age`."""
    if not recipients:
        return name, data
    try:
        import pyrage
    except ImportError:
        raise WireError(
            "age_encryption_recipients", "age encryption needs pyrage here: pip install 'mint-lora[train]'"
        ) from None
    parsed = []
    for index, recipient in enumerate(recipients):
        kind = pyrage.ssh if recipient.startswith("ssh-") else pyrage.x25519
        try:
            parsed.append(kind.Recipient.from_str(recipient))
        except pyrage.RecipientError as exc:
            raise WireError(
                f"age_encryption_recipients[{index}]", f"not an age or SSH recipient: {exc}"
            ) from None
    return name + AGE_SUFFIX, pyrage.encrypt(data, parsed)


def external_key(policy: str, path: TinkerPath, sha256: str, name: str) -> str:
    """The artifact key of an external checkpoint's file: by content (the store checks it on read)."""
    model = path.model_id.replace(":", "-")
    return f"tinker/{policy}/{model}/external_weights/{path.name}/{sha256}/{name}"


def _signed_text(path: TinkerPath, name: str, expires: int) -> str:
    return f"{path}\n{name}\n{expires}"


def signed_urls(keys: Keys, base_url: str, path: TinkerPath, names: list[str]) -> tuple[dict[str, str], int]:
    """A download URL per file, under `base_url` (the server as the client reached it), and when
    they expire (unix time)."""
    expires = int(time.time()) + URL_LIFETIME_S
    urls = {}
    for name in names:
        query = {"path": str(path), "file": name, "expires": expires}
        query["signature"] = keys.sign(_signed_text(path, name, expires))
        urls[name] = f"{base_url.rstrip('/')}/api/v1{DOWNLOAD_ROUTE}?{urlencode(query)}"
    return urls, expires


def check_signed(keys: Keys, path: TinkerPath, name: str, expires: int, signature: str) -> None:
    """Refuse a download URL that was not signed here or has expired (403)."""
    if not keys.signed(_signed_text(path, name, expires), signature):
        raise WireError("signature", "not a download URL this server signed", 403)
    if expires < time.time():
        raise WireError("expires", "this download URL has expired: ask for new ones", 403)
