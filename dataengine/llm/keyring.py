"""Provider keys encrypted at rest: Fernet (AES-128-CBC with an HMAC) under ``DATAENGINE_ENCRYPTION_KEY``.

The setting holds one or more Fernet keys separated by commas. The first encrypts; every one
decrypts (``MultiFernet``), so a key is rotated in three moves: put a new key first, run
``dataengine workspaces rotate-key`` (every stored key re-encrypted under the new one), then drop
the old key. Nothing here logs, and no error carries a key or a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataengine.infra.errors import DataEngineError
from dataengine.infra.settings import MAKE_FERNET_KEY, get_settings

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


class EncryptionKeyMissing(DataEngineError):
    """DATAENGINE_ENCRYPTION_KEY is not set: workspaces' provider keys are encrypted with it; make one with {make}"""

    def __init__(self) -> None:
        super().__init__(make=MAKE_FERNET_KEY)


class KeyUnreadable(DataEngineError):
    """{what} cannot be decrypted: its encryption key is no longer in DATAENGINE_ENCRYPTION_KEY (add it back)"""


def _box() -> MultiFernet:
    # Built per call: a Fernet is two keys and no I/O, and the settings may change under tests. Imported
    # here: a worker whose workspaces bring no key of their own never loads OpenSSL's bindings.
    from cryptography.fernet import Fernet, MultiFernet

    secret = get_settings().encryption_key
    if secret is None:
        raise EncryptionKeyMissing()
    return MultiFernet([Fernet(key) for key in secret.get_secret_value().split(",")])


def encrypt(plain: str) -> str:
    """``plain`` encrypted under the first encryption key, as text (Fernet's url-safe token)."""
    return _box().encrypt(plain.encode()).decode()


def decrypt(token: str, *, what: str = "A stored key") -> str:
    """The plain text of a token made by :func:`encrypt` under any of the encryption keys."""
    from cryptography.fernet import InvalidToken

    try:
        return _box().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyUnreadable(what=what) from None


def reencrypt(token: str, *, what: str = "A stored key") -> str:
    """The same plain text encrypted under the first encryption key (``MultiFernet.rotate``)."""
    from cryptography.fernet import InvalidToken

    try:
        return _box().rotate(token.encode()).decode()
    except InvalidToken:
        raise KeyUnreadable(what=what) from None
