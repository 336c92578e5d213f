"""How a certificate is named in storage and in a listener's set (a leaf module: placing the
certificates at every reload needs this, not the storage and its imports)."""

from __future__ import annotations

from collections.abc import Sequence


def cert_id(names: Sequence[str]) -> str:
    """The id of the certificate for ``names``: its first name, and a hash of the whole list when
    it has several (file- and label-safe: names are checked DNS names)."""
    if len(names) == 1:
        return names[0]
    import hashlib  # (here: every reload places certificates, few configs have multi-name ones)

    digest = hashlib.sha256(",".join(names).encode("ascii")).hexdigest()[:10]
    return f"{names[0]}+{digest}"
