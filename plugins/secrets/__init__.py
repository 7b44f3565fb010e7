"""Secret backends (runink.secret_backends): ``barn`` (envelope-encrypted in the Barn, the
default), ``file`` and ``env`` (development only: plaintext)."""
