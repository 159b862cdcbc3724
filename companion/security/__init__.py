"""Secure hand-over: the keys of the dispatcher and the drone, signed orders carrying the
recipient's sealed face template, and the tamper-evident audit trail.

- `keys`: key files (0600 in a 0700 directory), fingerprints, public-key files.
- `orders`: the canonical, versioned, signed order; its verification on the drone (signature,
  drone id, validity, replayed nonces); the sealed template and the hashed fallback PIN.
- `audit`: the append-only, hash-chained, signed audit trail and its verifier.
- `encoding`: the canonical JSON and base64url both of them are written in.
- `commands`: `skycourier keys`, `skycourier order` and `skycourier audit`.
"""
