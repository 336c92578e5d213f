"""Automatic certificates (ACME, RFC 8555), shared by every edge node when the storage is the swarm.

Control plane (the supervisor; it alone holds the account key):

- ``client``: the protocol, on certbot's ``acme`` library (blocking: every call runs in a thread);
- ``manager``: which certificates to obtain and when to renew them, back-off, metrics;
- ``storage``: where the account, the certificates and the challenge answers are kept:
  ``dir_storage`` (files, 0600, written atomically) or ``swarm_storage`` (Docker configs through the
  managers, keys encrypted with ``sealed``, one orderer at a time through a lease lock).

Data plane (workers; they never see the account key):

- ``board``: the challenge answers a worker serves (HTTP-01 token -> key authorization,
  TLS-ALPN-01 name -> acme-tls/1 certificate), with the JSON wire form the supervisor pushes;
- ``answers``: what a listener does with the board (the HTTP-01 response for a path, the TLS
  context for a ClientHello that offers ``acme-tls/1``).

Nothing here imports ``net/`` or ``runtime/``: the composition root hands the manager its storage
and callbacks, and the listeners ask ``answers`` with the bytes they already parsed.
"""
