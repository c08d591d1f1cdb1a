"""API keys: generated once, shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from store.models import ApiKey

KEY_PREFIX = "crl_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """A new key row and the plain key (the only time it exists outside the client)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(plain), prefix=plain[:12])
    session.add(row)
    session.flush()
    return row, plain


def find_key(session: Session, *, plain: str) -> ApiKey | None:
    query = select(ApiKey).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    return session.scalars(query).first()


def any_keys(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))
